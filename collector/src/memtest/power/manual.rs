//! No automatic power control: the collector logs what an operator must do now.

use super::Action;

/// Logs the action an operator must take on `node`.
pub(super) fn act(node: &str, action: Action) {
    tracing::warn!(
        node,
        ?action,
        "manual power: an operator must {} this node now",
        if action == Action::Reset {
            "reset"
        } else {
            "power off"
        }
    );
}
