//! Test harness for end-to-end tests: starts the real `caldera` binary (which starts real
//! `caldera-worker` processes) on a free port, and inspects processes through `/proc`.

pub mod audio;
pub mod client;
pub mod http_proxy;
pub mod http_server;
pub mod media;
pub mod procfs;
pub mod rig;
pub mod systemd;
pub mod voice;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "youshallnotpass";

/// A built binary of this workspace (`caldera`, `caldera-worker`), next to the test executable's
/// target directory. The README's test command builds them before running the tests.
/// The interpreter of the resolver's environment that `scripts/setup.sh` installs.
pub fn resolver_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resolver/venv/bin/python");
    assert!(python.exists(), "{} is missing; run ./scripts/setup.sh", python.display());
    python
}

pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // Tests run from target/<profile>/deps/, binaries (loadgen) from target/<profile>/.
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing; build the binaries first: cargo build --workspace --bins",
        path.display()
    );
    path
}

/// Captured stderr lines of a process, echoed to the test's own stderr.
#[derive(Default)]
pub struct Logs {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Logs {
    fn capture(self: &Arc<Self>, stream: impl std::io::Read + Send + 'static, tag: String) {
        let logs = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                logs.lines.lock().unwrap().push(line);
                logs.grew.notify_all();
            }
        });
    }

    /// The first line containing `needle`, waiting up to `timeout` for it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = self.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// Every line so far containing `needle`.
    pub fn lines_containing(&self, needle: &str) -> Vec<String> {
        self.lines.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Waits until at least `n` lines contain `needle`.
    pub fn wait_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if lines.iter().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            lines = self.grew.wait_timeout(lines, left).unwrap().0;
        }
    }
}

/// Options for starting a node.
pub struct NodeOptions {
    /// Extra YAML appended to the generated config (server.port 0 on loopback is always set).
    pub yaml: String,
    pub workers: usize,
    pub env: Vec<(String, String)>,
    /// Wait for "listening on"; off for nodes expected not to get that far.
    pub wait_listening: bool,
    /// The gateway binary; the one just built by default.
    pub binary: Option<PathBuf>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self { yaml: String::new(), workers: 2, env: Vec::new(), wait_listening: true, binary: None }
    }
}

/// A running `caldera` gateway, killed (with its workers) when dropped.
pub struct Node {
    child: Child,
    pub addr: Option<SocketAddr>,
    pub logs: Arc<Logs>,
    pub dir: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

impl Node {
    pub fn start() -> Node {
        Self::start_with(NodeOptions::default())
    }

    pub fn start_with(opts: NodeOptions) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("application.yml");
        let mut yaml = opts.yaml.clone();
        if !yaml.contains("caldera:") {
            yaml.push_str(&format!("\ncaldera:\n  workers: {}\n", opts.workers));
        }
        if !yaml.contains("server:\n  port") {
            yaml = format!("server:\n  port: 0\n  address: 127.0.0.1\n{yaml}");
        }
        std::fs::write(&config, yaml).expect("write config");
        let mut cmd = Command::new(opts.binary.clone().unwrap_or_else(|| bin("caldera")));
        // A resolver (a Python process) only for the tests that configure one.
        if !opts.yaml.contains("resolver:") && !opts.env.iter().any(|(k, _)| k.starts_with("CALDERA_RESOLVER")) {
            cmd.env("CALDERA_RESOLVER_ENABLED", "false");
        }
        cmd.arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SERVER_PORT")
            .env_remove("SERVER_ADDRESS")
            .env_remove("LAVALINK_SERVER_PASSWORD")
            // Under systemd workers outlive their gateway; tests that want that say so.
            .env_remove("RUNTIME_DIRECTORY")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn caldera");
        let logs = Arc::new(Logs::default());
        let pid = child.id();
        logs.capture(child.stderr.take().unwrap(), format!("caldera {pid}"));
        logs.capture(child.stdout.take().unwrap(), format!("caldera {pid} stdout"));
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let mut node = Node { child, addr: None, logs, dir, http };
        if opts.wait_listening {
            let line = node
                .logs
                .wait_for("listening on ", Duration::from_secs(60))
                .expect("caldera did not start listening within 60 s");
            let addr = line.rsplit("listening on ").next().unwrap().split_whitespace().next().unwrap();
            node.addr = Some(addr.parse().expect("listen address"));
        }
        node
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr.expect("node is not listening"), path)
    }

    /// GET with the right password.
    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.http.get(self.url(path)).header("Authorization", PASSWORD).send().expect("GET")
    }

    /// Runs `tests/python/<script> HOST PORT PASSWORD ARGS...` (a script driving the real `lavalink`
    /// client library against this node) and returns the JSON of its last output line.
    pub fn python(&self, script: &str, args: &[&str]) -> serde_json::Value {
        let addr = self.addr.expect("node is not listening");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(script);
        let out = Command::new("python3")
            .arg(path)
            .args([addr.ip().to_string(), addr.port().to_string(), PASSWORD.to_string()])
            .args(args)
            .output()
            .expect("python3 (scripts/setup.sh installs it and the lavalink package)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the script's JSON line")
    }

    /// POST a JSON body with the right password.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::blocking::Response {
        self.http.post(self.url(path)).header("Authorization", PASSWORD).json(body).send().expect("POST")
    }

    /// `GET /v4/loadtracks?identifier=...` as JSON.
    pub fn load(&self, identifier: &str) -> serde_json::Value {
        let res = self
            .http
            .get(self.url("/v4/loadtracks"))
            .query(&[("identifier", identifier)])
            .header("Authorization", PASSWORD)
            .send()
            .expect("loadtracks");
        assert_eq!(res.status(), 200, "loadtracks {identifier}");
        res.json().expect("loadtracks JSON")
    }

    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// Live `caldera-worker` children of this gateway.
    pub fn worker_pids(&self) -> Vec<u32> {
        procfs::live_children(self.pid(), "caldera-worker")
    }

    /// Waits until the gateway has exactly `n` live workers, all having said hello.
    pub fn wait_workers(&self, n: usize, timeout: Duration) -> Vec<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.worker_pids();
            let ready = pids.iter().all(|p| self.logs.count(&format!("worker ready pid={p}")) > 0);
            if pids.len() == n && ready {
                return pids;
            }
            assert!(Instant::now() < deadline, "expected {n} ready workers, have {pids:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).expect("signal");
    }

    /// Waits for the gateway to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Now, in Unix milliseconds (what Lavalink's `time` fields count).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}
