#![no_std]
// The program lives in main.rs; this library exists only so that netboot-user can build-depend on
// this crate and cargo rebuilds the object when it changes.
