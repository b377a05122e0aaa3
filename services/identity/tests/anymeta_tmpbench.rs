mod support;
use std::time::{Duration, Instant};
use support::fake_anymeta::FakeAnyMeta;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_throughput() {
    let fake = FakeAnyMeta::start().await;
    for i in 0u32..1000 {
        fake.add_person(&hex::encode(i.to_be_bytes()), i as u64, "P");
    }
    fake.set_latency(Duration::from_millis(50));
    let client = fake.client(Duration::from_secs(5));
    for conc in [200usize, 1000] {
        let n = 10_000usize;
        let started = Instant::now();
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(conc));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let c = client.clone();
            let permit = sem.clone().acquire_owned().await.unwrap();
            set.spawn(async move {
                let r = c.identify_rfid(&((i % 1000) as u32).to_be_bytes()).await;
                drop(permit);
                r
            });
        }
        let mut errs = 0;
        while let Some(r) = set.join_next().await {
            if r.unwrap().is_err() {
                errs += 1;
            }
        }
        let el = started.elapsed();
        println!(
            "conc {conc}: {n} in {el:?} = {:.0}/s, errors {errs}",
            n as f64 / el.as_secs_f64()
        );
    }
}
