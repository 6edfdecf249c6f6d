//! Long interleaved conversations under random delivery order (proptest).

mod common;

use common::{established, rng};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// Alice (true) or Bob (false) sends a message.
    Send(bool),
    /// Deliver the in-flight message at this position (modulo the queue) to its recipient.
    Deliver(bool, usize),
    /// Drop an in-flight message for good.
    Lose(bool, usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<bool>().prop_map(Step::Send),
        5 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Step::Deliver(d, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Step::Lose(d, i)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn interleaved_conversation_under_random_delivery(
        seed in any::<u64>(),
        steps in proptest::collection::vec(step(), 1..500),
    ) {
        let mut rng = rng(seed);
        let (mut alice, mut bob) = established(&mut rng, seed % 2 == 0);
        // In flight towards Bob (index 0) and towards Alice (index 1).
        let mut queues: [Vec<(Vec<u8>, Vec<u8>)>; 2] = [Vec::new(), Vec::new()];
        let mut counter = 0u32;
        for step in steps {
            match step {
                Step::Send(from_alice) => {
                    counter += 1;
                    let text = format!("{from_alice}-{counter}").into_bytes();
                    let (session, q) = if from_alice { (&mut alice, 0) } else { (&mut bob, 1) };
                    let m = session.encrypt(&text, &mut rng).unwrap();
                    queues[q].push((m, text));
                }
                Step::Deliver(to_bob, i) => {
                    let q = if to_bob { 0 } else { 1 };
                    if queues[q].is_empty() { continue; }
                    let (m, text) = queues[q].remove(i % queues[q].len());
                    let session = if to_bob { &mut bob } else { &mut alice };
                    prop_assert_eq!(session.decrypt(&m).unwrap(), text);
                    // A replay always fails.
                    prop_assert!(session.decrypt(&m).is_err());
                }
                Step::Lose(to_bob, i) => {
                    let q = if to_bob { 0 } else { 1 };
                    if !queues[q].is_empty() {
                        let n = queues[q].len();
                        queues[q].remove(i % n);
                    }
                }
            }
        }
        // Everything still in flight arrives, newest first.
        for (q, session) in [(0usize, &mut bob), (1, &mut alice)] {
            while let Some((m, text)) = queues[q].pop() {
                prop_assert_eq!(session.decrypt(&m).unwrap(), text);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn group_messages_under_random_delivery(
        seed in any::<u64>(),
        order in Just((0..60usize).collect::<Vec<_>>()).prop_shuffle(),
        lost in proptest::collection::btree_set(0..60usize, 0..10),
    ) {
        use courier_crypto::{SenderKey, SenderKeyReceiver};
        let mut rng = rng(seed);
        let mut sender = SenderKey::generate(&mut rng);
        let mut receiver = SenderKeyReceiver::from_distribution(&sender.distribution_message()).unwrap();
        let msgs: Vec<Vec<u8>> = (0..60u32).map(|i| sender.encrypt(&i.to_be_bytes()).unwrap()).collect();
        for i in order {
            if lost.contains(&i) { continue; }
            prop_assert_eq!(receiver.decrypt(&msgs[i]).unwrap(), (i as u32).to_be_bytes());
            prop_assert!(receiver.decrypt(&msgs[i]).is_err());
        }
    }
}
