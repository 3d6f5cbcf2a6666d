//! No automatic power control: the collector logs what an operator must do now.

use super::Action;

/// Logs the action an operator must take on `node`.
pub(super) fn act(node: &str, action: Action) {
    tracing::warn!(
        node,
        ?action,
        "manual power: an operator must {} this node now",
        match action {
            Action::Reset | Action::Warm => "reset",
            Action::Off => "power off",
            Action::Cold => "power off, wait ten seconds and power on",
        }
    );
}
