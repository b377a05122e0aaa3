//! `tagpoll-reader`: runs on each reader device. Config and wiring only.

use anyhow::Context;
use clap::Parser;
use tagpoll_reader::{config, service, sim};

/// Reads RFID taps from serial readers (or a simulated crowd) and delivers
/// them to NATS JetStream without losing one.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Device config file (TOML); flags below override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Device id (unique per reader box).
    #[arg(long)]
    device: Option<String>,
    /// A reader: READER_ID=PATH,protocol=NAME[,baud=N]; PATH may be usb:SERIAL. Repeatable.
    #[arg(long = "reader")]
    readers: Vec<String>,
    /// Spool folder (default: $STATE_DIRECTORY/spool or ~/.local/state/tagpoll/DEVICE/spool).
    #[arg(long)]
    spool: Option<std::path::PathBuf>,
    /// Spool size limit in MiB (default 64); an alarm is raised at 80%.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    spool_max_mb: Option<u64>,
    /// Debounce quiet time: a tag not seen for this long has left the reader (default 300).
    #[arg(long, value_name = "MS")]
    quiet_ms: Option<u64>,
    /// Shell command run (`sh -c`) for every outcome at one of our readers,
    /// with TAGPOLL_READER, TAGPOLL_OUTCOME, ... in its environment.
    #[arg(long, value_name = "CMD")]
    feedback_cmd: Option<String>,
    /// Simulate a crowd tapping every reader mapped in the event.
    #[arg(long)]
    simulate: bool,
    /// Simulated taps per second.
    #[arg(long, default_value_t = 2.0)]
    sim_rate: f64,
    /// Simulated crowd size.
    #[arg(long, default_value_t = 300)]
    sim_crowd: usize,
    /// Planned simulation: exactly this many reproducible taps (resumed after a restart), then idle.
    #[arg(long)]
    sim_taps: Option<u64>,
    /// Seed of the simulated crowd.
    #[arg(long, default_value_t = 7)]
    sim_seed: u64,
}

fn device_config(args: &Args) -> anyhow::Result<config::DeviceConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            config::parse_file(&path.display().to_string(), &text)?
        }
        None => config::DeviceConfig {
            device_id: String::new(),
            readers: vec![],
            spool_dir: None,
            spool_max_bytes: config::DEFAULT_SPOOL_MAX_BYTES,
            quiet: tagpoll_reader::debounce::DEFAULT_QUIET,
            feedback_command: None,
            nats_url: None,
            nats_creds: None,
        },
    };
    if let Some(d) = &args.device {
        tagpoll_proto::ids::check_id(d).map_err(|e| anyhow::anyhow!("--device {d:?} {e}"))?;
        cfg.device_id = d.clone();
    }
    if cfg.device_id.is_empty() {
        anyhow::bail!("no device id: give --device DEVICE_ID or `device = \"...\"` in --config");
    }
    for r in &args.readers {
        let spec = config::parse_reader_flag(r)?;
        cfg.readers.retain(|x| x.id != spec.id);
        cfg.readers.push(spec);
    }
    if let Some(s) = &args.spool {
        cfg.spool_dir = Some(s.clone());
    }
    if let Some(mb) = args.spool_max_mb {
        cfg.spool_max_bytes = mb * 1024 * 1024;
    }
    if let Some(ms) = args.quiet_ms {
        cfg.quiet = std::time::Duration::from_millis(ms);
    }
    if let Some(cmd) = &args.feedback_cmd {
        cfg.feedback_command = Some(cmd.clone());
    }
    if cfg.readers.is_empty() && !args.simulate {
        anyhow::bail!("no readers: give --reader READER_ID=PATH,protocol=NAME (or --simulate)");
    }
    Ok(cfg)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tagpoll_bus::telemetry::init();
    let args = Args::parse();
    let cfg = device_config(&args)?;
    let spool_dir = cfg
        .spool_dir
        .clone()
        .unwrap_or_else(|| config::default_spool_dir(&cfg.device_id));
    if args.check {
        println!(
            "device {}: {} reader(s), spool {} (max {} MiB), quiet {} ms",
            cfg.device_id,
            cfg.readers.len(),
            spool_dir.display(),
            cfg.spool_max_bytes / (1024 * 1024),
            cfg.quiet.as_millis()
        );
        for r in &cfg.readers {
            let path = match &r.path {
                config::ReaderPath::Path(p) => p.display().to_string(),
                config::ReaderPath::UsbSerial(s) => format!("usb:{s}"),
            };
            println!(
                "  {} {} protocol={} baud={}",
                r.id, path, r.protocol, r.baud
            );
        }
        if let Some(cmd) = &cfg.feedback_command {
            println!("  feedback command: {cmd}");
        }
        println!("configuration OK");
        return Ok(());
    }
    // The file's NATS settings apply unless the environment overrides them.
    // SAFETY: no other thread reads the environment yet.
    unsafe {
        if let (Some(url), Err(_)) = (&cfg.nats_url, std::env::var("NATS_URL")) {
            std::env::set_var("NATS_URL", url);
        }
        if let (Some(creds), Err(_)) = (&cfg.nats_creds, std::env::var("NATS_CREDS")) {
            std::env::set_var("NATS_CREDS", creds);
        }
    }
    let opts = tagpoll_bus::BusOptions::from_env(&format!("tagpoll-reader-{}", cfg.device_id))?;
    let client = tagpoll_bus::connect(&opts, true).await?;
    let sim = args.simulate.then_some(sim::SimOptions {
        rate: args.sim_rate,
        crowd: args.sim_crowd,
        seed: args.sim_seed,
        taps: args.sim_taps,
    });
    service::run(cfg, spool_dir, client, sim).await?;
    Ok(())
}
