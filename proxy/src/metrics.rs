//! Prometheus metrics, on the admin listener at `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub bytes_encrypted: IntCounter,
    pub bytes_decrypted: IntCounter,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub duration: HistogramVec,
    pub key_loaded: IntGauge,
    pub active: IntGauge,
    pub encryption_errors: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub backend_errors: IntCounterVec,
    pub backend_up: IntGauge,
    pub key_memory_locked: IntGauge,
    pub core_dumps_disabled: IntGauge,
    pub key_conflict: IntGauge,
    pub key_conflicts: IntCounter,
    pub read_plans: IntCounterVec,
    /// Per configured client (the label is a configured access key: bounded by the config).
    pub client_requests: IntCounterVec,
    pub client_bytes: IntCounterVec,
    pub client_throttled: IntCounterVec,
    /// memkey-server's key source, as its `/status` reports it (polled with the keys).
    pub key_source: IntGaugeVec,
    pub key_source_last_unseal: IntGauge,
    pub key_source_unseal_failures: IntGaugeVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let p = "s3_crypt_proxy_";
        Self {
            requests: reg(&r, IntCounterVec::new(Opts::new(format!("{p}requests_total"), "S3 requests answered"), &["method", "operation", "status"]).expect("valid")),
            bytes_encrypted: reg(&r, IntCounter::new(format!("{p}bytes_encrypted_total"), "Plaintext bytes encrypted").expect("valid")),
            bytes_decrypted: reg(&r, IntCounter::new(format!("{p}bytes_decrypted_total"), "Plaintext bytes decrypted and authenticated").expect("valid")),
            bytes_received: reg(&r, IntCounter::new(format!("{p}bytes_received_total"), "Request body bytes received from clients").expect("valid")),
            bytes_sent: reg(&r, IntCounter::new(format!("{p}bytes_sent_total"), "Response body bytes sent to clients").expect("valid")),
            duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(format!("{p}request_duration_seconds"), "Time from request to the end of the answer")
                        .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                    &["operation"],
                )
                .expect("valid"),
            ),
            key_loaded: reg(&r, IntGauge::new(format!("{p}key_loaded"), "1 when an encryption key is loaded").expect("valid")),
            active: reg(&r, IntGauge::new(format!("{p}active_requests"), "Requests in flight").expect("valid")),
            encryption_errors: reg(&r, IntCounterVec::new(Opts::new(format!("{p}encryption_errors_total"), "Objects that failed encryption, decryption or authentication"), &["type"]).expect("valid")),
            auth_failures: reg(&r, IntCounterVec::new(Opts::new(format!("{p}auth_failures_total"), "Requests refused by client authentication"), &["reason"]).expect("valid")),
            backend_errors: reg(&r, IntCounterVec::new(Opts::new(format!("{p}backend_errors_total"), "Backend answers with status >= 500, or no answer (status=\"unreachable\")"), &["status"]).expect("valid")),
            backend_up: reg(&r, IntGauge::new(format!("{p}backend_up"), "1 when the last backend probe succeeded").expect("valid")),
            key_memory_locked: reg(&r, IntGauge::new(format!("{p}key_memory_locked"), "1 when the loaded keys are locked in RAM (mlock), so they are never swapped").expect("valid")),
            core_dumps_disabled: reg(&r, IntGauge::new(format!("{p}core_dumps_disabled"), "1 when core dumps are off and the process is not dumpable (RLIMIT_CORE=0, PR_SET_DUMPABLE=0)").expect("valid")),
            key_conflict: reg(&r, IntGauge::new(format!("{p}key_conflict"), "1 while keyd offers different key material under a key id already loaded (refused; the loaded key stays)").expect("valid")),
            key_conflicts: reg(&r, IntCounter::new(format!("{p}key_conflicts_total"), "Key deliveries refused because a key id came with different key material").expect("valid")),
            read_plans: reg(&r, IntCounterVec::new(Opts::new(format!("{p}read_plans_total"), "Range and partNumber reads by how they were planned: memory (no header read), header_reads, from_start (one request from stored byte 0), replanned (the remembered version was replaced)"), &["plan"]).expect("valid")),
            client_requests: reg(&r, IntCounterVec::new(Opts::new(format!("{p}client_requests_total"), "Requests by configured client and status class (2xx, 3xx, 4xx, 5xx)"), &["access_key", "class"]).expect("valid")),
            client_bytes: reg(&r, IntCounterVec::new(Opts::new(format!("{p}client_bytes_total"), "Body bytes by configured client, received from it (in) and sent to it (out)"), &["access_key", "direction"]).expect("valid")),
            client_throttled: reg(&r, IntCounterVec::new(Opts::new(format!("{p}client_throttled_total"), "Requests refused with 503 SlowDown by the client's rate limit"), &["access_key"]).expect("valid")),
            key_source: reg(&r, IntGaugeVec::new(Opts::new(format!("{p}key_source_info"), "1 for memkey-server's key source (kind: delivery, pkcs11, aws-kms) and its state (waiting_for_delivery, unsealing, retrying, loaded, failed)"), &["kind", "state"]).expect("valid")),
            key_source_last_unseal: reg(&r, IntGauge::new(format!("{p}key_source_last_unseal_timestamp_seconds"), "Unix time memkey-server last unsealed its keys from its HSM/KMS (0: never)").expect("valid")),
            key_source_unseal_failures: reg(&r, IntGaugeVec::new(Opts::new(format!("{p}key_source_unseal_failures"), "Failed unseal attempts since memkey-server started, by reason (unreachable, auth, key_unavailable, tampered, key_check_mismatch, bad_file, conflict, config)"), &["reason"]).expect("valid")),
            registry: {
                reg(&r, filters::listing::UNDECLARED_CHUNK_SIZE_READS.clone());
                // Backend round trips and connections (filters/src/backend_stats.rs).
                reg(&r, filters::backend_stats::BACKEND_REQUESTS.clone());
                reg(&r, filters::backend_stats::BACKEND_CONNECTIONS.clone());
                reg(&r, filters::backend_stats::BACKEND_TLS_HANDSHAKES.clone());
                for path in ["proxied", "side"] {
                    // Exported from the start (at 0), so that a rate is defined before the first connection.
                    filters::backend_stats::BACKEND_CONNECTIONS.with_label_values(&[path]);
                    filters::backend_stats::BACKEND_TLS_HANDSHAKES.with_label_values(&[path]);
                }
                filters::backend_stats::BACKEND_REQUESTS.with_label_values(&["proxied"]);
                r
            },
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
