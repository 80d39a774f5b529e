//! The one description of a whole stack that every whole-stack test starts:
//! the end-to-end tests (`e2e`, `handoff`: layers in this process) and the
//! reliability suite (`system`: layers as `lambda` processes). What the
//! roles share, what each adds, and the timings tests shorten are decided
//! here once.

use std::path::Path;

/// A role of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Batch,
    Speed,
    Serve,
    /// A second speed layer (its own data directory and HTTP address), in
    /// stacks that ask for one: the two share the partitions through the
    /// consumer group.
    Speed2,
    /// A second batch layer, in stacks that ask for one: the two share the
    /// partitions through the consumer group and the store.
    Batch2,
    /// A second serving replica, in stacks that ask for one (it pulls views
    /// from the second batch layer when there is one).
    Serve2,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Batch, Role::Speed, Role::Serve];

    /// The role's name (its data directory and log).
    pub fn name(self) -> &'static str {
        match self {
            Role::Speed2 => "speed2",
            Role::Batch2 => "batch2",
            Role::Serve2 => "serve2",
            other => other.subcommand(),
        }
    }

    /// The role's subcommand.
    pub fn subcommand(self) -> &'static str {
        match self {
            Role::Batch | Role::Batch2 => "batch",
            Role::Speed | Role::Speed2 => "speed",
            Role::Serve | Role::Serve2 => "serve",
        }
    }
}

/// How a stack is configured.
#[derive(Debug, Clone)]
pub struct StackSpec {
    pub brokers: String,
    pub topic: String,
    pub partitions: u32,
    /// Small, so that every recompute moves the cut and hands counts over.
    pub bucket_size: u64,
    pub max_event_bytes: usize,
    pub admin_token: String,
    pub recompute_interval: String,
    /// How often the speed layer looks for a new batch cut and the serving
    /// layer for a new view.
    pub poll_interval: String,
    pub micro_batch_records: Option<usize>,
    pub stale_after: Option<String>,
    /// Flags every role gets besides (e.g. how to reach a secured broker).
    pub extra: Vec<String>,
}

impl StackSpec {
    /// Three partitions, buckets of 16, events of at most 1 KiB, an admin
    /// token, no periodic recompute, 100 ms polls.
    pub fn new(brokers: &str, topic: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            partitions: 3,
            bucket_size: 16,
            max_event_bytes: 1024,
            admin_token: "stack-admin-token".to_owned(),
            recompute_interval: "1h".to_owned(),
            poll_interval: "100ms".to_owned(),
            micro_batch_records: None,
            stale_after: None,
            extra: Vec::new(),
        }
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }

    pub fn realtime_topic(&self) -> String {
        format!("{}.rt", self.topic)
    }

    /// The flags of `role` (no program name), keeping its data in
    /// `data_dir` and serving HTTP at `http_addr`; `batch_url` is where the
    /// speed and serving layers find the batch layer.
    pub fn flags(
        &self,
        role: Role,
        data_dir: &Path,
        http_addr: &str,
        batch_url: Option<&str>,
    ) -> Vec<String> {
        let mut f: Vec<String> = [
            "--brokers",
            &self.brokers,
            "--topic",
            &self.topic,
            "--dead-letter-topic",
            &self.dead_letter_topic(),
            "--realtime-topic",
            &self.realtime_topic(),
            "--partitions",
            &self.partitions.to_string(),
            "--bucket-size",
            &self.bucket_size.to_string(),
            "--max-event-bytes",
            &self.max_event_bytes.to_string(),
            "--data-dir",
            data_dir.to_str().expect("a UTF-8 data directory"),
            "--http-addr",
            http_addr,
        ]
        .map(str::to_owned)
        .to_vec();
        let mut add = |flag: &str, value: &str| f.extend([flag.to_owned(), value.to_owned()]);
        match role {
            Role::Batch | Role::Batch2 => {
                add("--recompute-interval", &self.recompute_interval);
                add("--admin-token", &self.admin_token);
            }
            Role::Speed | Role::Speed2 => {
                if let Some(url) = batch_url {
                    add("--batch-url", url);
                }
                add("--cut-poll-interval", &self.poll_interval);
                if let Some(n) = self.micro_batch_records {
                    add("--micro-batch-records", &n.to_string());
                }
            }
            Role::Serve | Role::Serve2 => {
                if let Some(url) = batch_url {
                    add("--batch-url", url);
                }
                add("--view-poll-interval", &self.poll_interval);
                add("--admin-token", &self.admin_token);
                if let Some(after) = &self.stale_after {
                    add("--stale-after", after);
                }
            }
        }
        f.extend(self.extra.iter().cloned());
        f
    }
}

/// A role's flags parsed as `lambda <role>` would, for the tests that run
/// the layers in their own process.
pub fn parse<A: clap::Args>(flags: impl IntoIterator<Item = String>) -> A {
    #[derive(clap::Parser)]
    struct Role<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    let argv = std::iter::once("lambda".to_owned()).chain(flags);
    <Role<A> as clap::Parser>::try_parse_from(argv)
        .expect("valid flags")
        .args
}
