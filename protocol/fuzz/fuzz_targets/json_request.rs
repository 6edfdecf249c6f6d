#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    courier_protocol::fuzz::decode_any_json_request(data);
});
