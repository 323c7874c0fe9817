//! CMS Blue Button 2.0 v2 sandbox emulator.
