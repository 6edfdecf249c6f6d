#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    courier_protocol::fuzz::decode_any_fed_delivery_batch(data);
});
