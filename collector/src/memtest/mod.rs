//! memtest86+ before Linux: reading its serial console. memtest86+ mirrors its screen to the
//! serial port as VT100; [`screen::MemtestScreen`] keeps the 80×25 screen and reads the
//! results off it.

pub mod capture;
pub mod power;
pub mod screen;
pub mod stage;
