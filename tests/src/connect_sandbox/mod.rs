//! LinuxForHealth connect intake emulator.
