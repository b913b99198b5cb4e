//! The config parser: any text parses or gives an error; a line named is inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = contact_sync::config::parse(&text) {
        if let Some(line) = e.line {
            assert!(line >= 1 && line <= text.lines().count() + 1);
        }
    }
});
