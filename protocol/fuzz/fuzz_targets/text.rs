#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    courier_protocol::fuzz::decode_any_text(data);
});
