//! Generates Kotlin, Swift and Python sources from the built `fieldsync_ffi` library:
//! `uniffi-bindgen generate --library target/debug/libfieldsync_ffi.so --language kotlin ...`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
