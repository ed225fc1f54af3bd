//! The deployment files agree with the repository. There is no container
//! engine in CI, so this checks everything short of running them:
//! docker-compose.yml parses, names files and services that exist, runs the
//! binary the Dockerfile installs, and gives NGINX the very
//! deploy/nginx/nginx.conf the browser test runs (rendered by the same
//! deploy/nginx/render.sh, which this test executes with the compose
//! arguments); the Dockerfile copies every workspace member and every file the
//! crates embed, and builds targets the workspace has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn compose() -> Yaml {
    let docs = YamlLoader::load_from_str(&read("docker-compose.yml"))
        .unwrap_or_else(|e| panic!("docker-compose.yml does not parse: {e}"));
    assert_eq!(docs.len(), 1, "docker-compose.yml: one document");
    docs.into_iter().next().unwrap()
}

fn services(doc: &Yaml) -> BTreeMap<String, Yaml> {
    let map = doc["services"]
        .as_hash()
        .expect("docker-compose.yml: `services` is a mapping");
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().expect("service names are strings").to_owned(),
                v.clone(),
            )
        })
        .collect()
}

/// A list of strings (`[a, b]`) or one string (`a`), as compose accepts both.
fn strings(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Array(items) => items
            .iter()
            .map(|i| i.as_str().expect("a list of strings").to_owned())
            .collect(),
        Yaml::String(s) => vec![s.clone()],
        Yaml::BadValue => Vec::new(),
        other => panic!("expected a string or a list of strings, got {other:?}"),
    }
}

fn env(service: &Yaml, key: &str) -> Option<String> {
    match &service["environment"][key] {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Services built from this repository (the Scaled Sockets instances).
fn instances(all: &BTreeMap<String, Yaml>) -> BTreeMap<String, Yaml> {
    all.iter()
        .filter(|(_, s)| !s["build"].is_badvalue())
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect()
}

/// The port in `host:port` or `port`.
fn port_of(addr: &str) -> u16 {
    let port = addr.rsplit(':').next().unwrap();
    port.parse()
        .unwrap_or_else(|_| panic!("no port in {addr:?}"))
}

#[test]
fn compose_names_only_existing_files_and_services() {
    let doc = compose();
    let all = services(&doc);
    for (name, svc) in &all {
        match &svc["build"] {
            Yaml::BadValue => assert!(
                svc["image"].as_str().is_some(),
                "{name}: neither build nor image"
            ),
            Yaml::String(ctx) => assert!(
                root().join(ctx).join("Dockerfile").is_file(),
                "{name}: no Dockerfile in {ctx}"
            ),
            build => {
                let ctx = build["context"].as_str().unwrap_or(".");
                let file = build["dockerfile"].as_str().unwrap_or("Dockerfile");
                assert!(
                    root().join(ctx).join(file).is_file(),
                    "{name}: {ctx}/{file} missing"
                );
            }
        }
        for dep in strings(&svc["depends_on"]) {
            assert!(
                all.contains_key(&dep),
                "{name} depends on unknown service {dep}"
            );
        }
        for volume in strings(&svc["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    root().join(source).exists(),
                    "{name}: volume source {source} does not exist"
                );
            }
        }
    }
    assert!(all.contains_key("redis"), "a redis service");
    assert_eq!(instances(&all).len(), 3, "three Scaled Sockets instances");
}

#[test]
fn compose_instances_form_one_cluster_of_a_binary_the_image_has() {
    let all = services(&compose());
    let installed = dockerfile_installed_binaries();
    let mut ids = BTreeSet::new();
    for (name, svc) in instances(&all) {
        let program = strings(&svc["entrypoint"])
            .into_iter()
            .next()
            .unwrap_or_else(dockerfile_entrypoint);
        assert!(
            installed.contains(&program),
            "{name} runs {program}, which the Dockerfile does not install ({installed:?})"
        );
        let listen = env(&svc, "SCALED_SOCKETS_LISTEN")
            .unwrap_or_else(|| panic!("{name}: no SCALED_SOCKETS_LISTEN"));
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{name} must listen on all interfaces, not {listen}"
        );
        let scaler = env(&svc, "SCALED_SOCKETS_SCALER")
            .unwrap_or_else(|| panic!("{name}: no SCALED_SOCKETS_SCALER"));
        let host = scaler
            .strip_prefix("redis://")
            .and_then(|r| r.split([':', '/']).next())
            .unwrap_or_else(|| panic!("{name}: scaler {scaler} is not redis://HOST:PORT"));
        assert!(
            all.contains_key(host),
            "{name}: scaler host {host} is not a service"
        );
        assert!(
            strings(&svc["depends_on"]).iter().any(|d| d == host),
            "{name} must depend on {host}"
        );
        let id = env(&svc, "SCALED_SOCKETS_INSTANCE_ID")
            .unwrap_or_else(|| panic!("{name}: no instance id"));
        assert!(ids.insert(id.clone()), "instance id {id} used twice");
        // Without either the server refuses to start.
        assert!(
            env(&svc, "SCALED_SOCKETS_TOKEN_SECRET").is_some()
                || env(&svc, "SCALED_SOCKETS_ALLOW_ANONYMOUS").as_deref() == Some("1"),
            "{name}: needs SCALED_SOCKETS_TOKEN_SECRET or SCALED_SOCKETS_ALLOW_ANONYMOUS=1"
        );
    }
}

/// The nginx service runs the tested deploy/nginx/nginx.conf through
/// deploy/nginx/render.sh: run its command here (with the mount and /tmp
/// mapped to real directories, nginx itself replaced by `true`) and check
/// what it renders.
#[test]
fn compose_nginx_runs_the_tested_config() {
    let all = services(&compose());
    let nginx = &all["nginx"];
    let mount = strings(&nginx["volumes"])
        .into_iter()
        .find(|v| v.starts_with("./deploy/nginx:"))
        .expect("nginx mounts ./deploy/nginx");
    let target = mount.split(':').nth(1).unwrap().to_owned();
    // The nginx and browser tests render and run these same two files,
    // through the one starter in the JS test helpers.
    let helpers = read("client/js/test/helpers.js");
    assert!(
        helpers.contains(r#""deploy", "nginx", "nginx.conf""#)
            && helpers.contains(r#""deploy", "nginx", "render.sh""#),
        "client/js/test/helpers.js renders deploy/nginx/nginx.conf with render.sh"
    );
    for test in [
        "client/js/test/browser.test.js",
        "client/js/test/nginx.test.js",
    ] {
        assert!(
            read(test).contains("startNginx"),
            "{test} starts nginx with the shared helper"
        );
    }

    let mut script = strings(&nginx["entrypoint"]);
    assert_eq!(script, ["/bin/sh", "-c"], "nginx's entrypoint is a shell");
    let command = strings(&nginx["command"]).join(" ");
    assert!(
        command.contains(&format!("{target}/render.sh {target}/nginx.conf")),
        "nginx renders the mounted nginx.conf: {command}"
    );
    assert!(command.contains("exec nginx "), "{command}");

    let tmp = std::env::temp_dir().join(format!("ss-deploy-files-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let host_dir = root().join("deploy/nginx");
    let local = command
        .replace(&target, host_dir.to_str().unwrap())
        .replace("/tmp/nginx", tmp.to_str().unwrap())
        .replace("exec nginx ", "exec true ");
    script.push(local);
    let out = Command::new("sh").args(&script[1..]).output().expect("sh");
    assert!(
        out.status.success(),
        "nginx's command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered =
        std::fs::read_to_string(tmp.join("nginx.conf")).expect("the command renders nginx.conf");
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(
        command.contains("-c /tmp/nginx/nginx.conf"),
        "nginx runs the rendered file: {command}"
    );

    // Upstreams: exactly the instances, on the port each listens on.
    let mut want: Vec<String> = instances(&all)
        .iter()
        .map(|(name, svc)| {
            format!(
                "{name}:{}",
                port_of(&env(svc, "SCALED_SOCKETS_LISTEN").unwrap())
            )
        })
        .collect();
    want.sort();
    let upstream = rendered
        .split("upstream scaled_sockets {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("an `upstream scaled_sockets` block");
    let mut got: Vec<String> = upstream
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    got.sort();
    assert_eq!(got, want, "nginx's upstream servers");
    let listen = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen "))
        .expect("a listen line");
    let published = strings(&nginx["ports"]);
    assert!(
        published
            .iter()
            .any(|p| port_of(p) == port_of(listen.trim_end_matches(';'))),
        "nginx listens on {listen} but publishes {published:?}"
    );
    // Nothing else changed: the rest is the tested file, line for line.
    let template = read("deploy/nginx/nginx.conf");
    let keep = |l: &&str| !l.trim().starts_with("server ") && !l.trim().starts_with("listen ");
    assert_eq!(
        rendered.lines().filter(keep).collect::<Vec<_>>(),
        template.lines().filter(keep).collect::<Vec<_>>()
    );
}

#[test]
fn render_script_rejects_bad_arguments() {
    let run = |args: &[&str]| {
        Command::new("sh")
            .arg(root().join("deploy/nginx/render.sh"))
            .args(args)
            .output()
            .expect("sh")
    };
    let conf = root().join("deploy/nginx/nginx.conf");
    let conf = conf.to_str().unwrap();
    assert_eq!(run(&[conf, "8080"]).status.code(), Some(2), "no upstream");
    assert_eq!(
        run(&[conf, "8080", "node-1"]).status.code(),
        Some(2),
        "no port"
    );
    assert_eq!(
        run(&[conf, "8080", "a;b:1"]).status.code(),
        Some(2),
        "injection"
    );
    let cargo_toml = root().join("Cargo.toml");
    assert_eq!(
        run(&[cargo_toml.to_str().unwrap(), "8080", "a:1"])
            .status
            .code(),
        Some(1),
        "not an nginx.conf"
    );
    let ok = run(&[conf, "127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002"]);
    assert!(ok.status.success());
    let text = String::from_utf8(ok.stdout).unwrap();
    assert!(
        text.contains("listen 127.0.0.1:9000;")
            && text.contains("server 127.0.0.1:9002 max_fails=1 fail_timeout=5s;")
    );
    assert!(!text.contains(":8081"));
}

// ------------------------------------------------------------- Dockerfile

/// Instructions (continuation lines joined, comments dropped), per stage.
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let text = read("Dockerfile");
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        let full = std::mem::take(&mut pending);
        let (op, rest) = full.split_once(' ').unwrap_or((&full, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push((op, rest.trim().to_owned()));
    }
    assert!(stages.len() >= 2, "a multi-stage Dockerfile");
    stages
}

/// COPY arguments without flags: (sources, destination).
fn copy_args(rest: &str) -> (Vec<String>, String, Option<String>) {
    let mut from = None;
    let mut words: Vec<String> = Vec::new();
    for w in rest.split_whitespace() {
        if let Some(f) = w.strip_prefix("--from=") {
            from = Some(f.to_owned());
        } else if !w.starts_with("--") {
            words.push(w.to_owned());
        }
    }
    let dest = words.pop().expect("COPY has a destination");
    (words, dest, from)
}

fn json_array(rest: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("exec form expected, got {rest}: {e}"))
}

fn dockerfile_entrypoint() -> String {
    let last = dockerfile_stages().pop().unwrap();
    let (_, rest) = last
        .iter()
        .rfind(|(op, _)| op == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    json_array(rest).remove(0)
}

/// Program names the final stage installs on PATH (/usr/local/bin).
fn dockerfile_installed_binaries() -> BTreeSet<String> {
    let last = dockerfile_stages().pop().unwrap();
    last.iter()
        .filter(|(op, _)| op == "COPY")
        .filter_map(|(_, rest)| {
            copy_args(rest)
                .1
                .strip_prefix("/usr/local/bin/")
                .map(str::to_owned)
        })
        .collect()
}

fn normalize(p: &str) -> String {
    let p = p.trim_start_matches("./").trim_end_matches('/');
    if p.is_empty() { ".".into() } else { p.into() }
}

fn covered(copied: &[String], rel: &str) -> bool {
    copied
        .iter()
        .any(|s| s == "." || s == rel || rel.starts_with(&format!("{s}/")))
}

/// Every `include_str!`/`include_bytes!` of the `.rs` files under `dir`, repository-relative.
fn embedded_files(dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            embedded_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for mac in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in text.match_indices(mac) {
                    let arg = &text[at + mac.len()..];
                    let arg = &arg[..arg.find('"').unwrap()];
                    let file = path
                        .parent()
                        .unwrap()
                        .join(arg)
                        .canonicalize()
                        .unwrap_or_else(|e| panic!("{}: {arg}: {e}", path.display()));
                    out.insert(
                        file.strip_prefix(root().canonicalize().unwrap())
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
    }
}

fn cargo_metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn dockerfile_copies_what_the_build_reads_and_builds_real_targets() {
    let stages = dockerfile_stages();
    let (build, run) = (&stages[0], stages.last().unwrap());
    assert!(
        build[0].1.contains(" AS "),
        "the first stage is named: {}",
        build[0].1
    );
    let stage_name = build[0].1.rsplit(' ').next().unwrap().to_owned();

    // COPY sources exist; keep them repository-relative.
    let mut copied = Vec::new();
    for (_, rest) in build.iter().filter(|(op, _)| op == "COPY") {
        let (sources, _, from) = copy_args(rest);
        assert!(
            from.is_none(),
            "the build stage copies from the context only"
        );
        for s in sources {
            let s = normalize(&s);
            assert!(root().join(&s).exists(), "COPY source {s} does not exist");
            copied.push(s);
        }
    }
    assert!(covered(&copied, "Cargo.lock") && covered(&copied, "Cargo.toml"));

    // Every workspace member and every file a crate embeds is in the image.
    let meta = cargo_metadata();
    let packages = meta["packages"].as_array().unwrap();
    let root_dir = root().canonicalize().unwrap();
    let mut embedded = BTreeSet::new();
    for pkg in packages {
        let dir = Path::new(pkg["manifest_path"].as_str().unwrap())
            .parent()
            .unwrap()
            .canonicalize()
            .unwrap();
        let rel = dir
            .strip_prefix(&root_dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let rel = if rel.is_empty() { ".".to_owned() } else { rel };
        if rel != "." {
            assert!(
                covered(&copied, &rel),
                "workspace member {rel} is not copied"
            );
        }
        embedded_files(&dir.join("src"), &mut embedded);
        embedded_files(&dir.join("examples"), &mut embedded);
    }
    assert!(
        !embedded.is_empty(),
        "the server embeds the JavaScript client"
    );
    for file in &embedded {
        assert!(
            covered(&copied, file),
            "{file} is embedded by a crate but not copied"
        );
    }
    for needed in ["src", "examples"] {
        assert!(covered(&copied, needed), "{needed} is not copied");
    }

    // `cargo build` names targets the workspace has; `cp` takes their outputs.
    let (_, cmd) = build
        .iter()
        .find(|(op, rest)| op == "RUN" && rest.contains("cargo build"))
        .expect("RUN cargo build");
    let words: Vec<&str> = cmd.split_whitespace().collect();
    assert!(
        words.contains(&"--release") && words.contains(&"--locked"),
        "{cmd}"
    );
    let mut outputs = BTreeMap::new();
    for (flag, kind, dir) in [("--bin", "bin", ""), ("--example", "example", "examples/")] {
        for name in words.windows(2).filter(|w| w[0] == flag).map(|w| w[1]) {
            let exists = packages
                .iter()
                .flat_map(|p| p["targets"].as_array().unwrap())
                .any(|t| {
                    t["name"] == name && t["kind"].as_array().unwrap().iter().any(|k| k == kind)
                });
            assert!(
                exists,
                "cargo build {flag} {name}: the workspace has no such target"
            );
            outputs.insert(format!("target/release/{dir}{name}"), ());
        }
    }
    assert!(!outputs.is_empty(), "the build builds something: {cmd}");
    let mut staged = BTreeSet::new();
    for part in cmd.split("&&").map(str::trim) {
        if let Some(args) = part.strip_prefix("cp ") {
            let (src, dst) = args.split_once(' ').unwrap();
            assert!(outputs.contains_key(src), "cp {src}: not built by {cmd}");
            staged.insert(dst.trim().to_owned());
        }
    }

    // The runtime stage takes exactly those files, runs as a non-root user,
    // and its entrypoint is one of them.
    let mut installed = BTreeSet::new();
    for (_, rest) in run.iter().filter(|(op, _)| op == "COPY") {
        let (sources, dest, from) = copy_args(rest);
        assert_eq!(
            from.as_deref(),
            Some(stage_name.as_str()),
            "the runtime stage copies from the build stage"
        );
        for s in sources {
            assert!(
                staged.contains(&s),
                "COPY --from={stage_name} {s}: the build stage does not produce it"
            );
        }
        installed.insert(dest);
    }
    let user = run
        .iter()
        .rfind(|(op, _)| op == "USER")
        .map(|(_, u)| u.split(':').next().unwrap().to_owned())
        .expect("the runtime stage sets USER");
    assert!(
        user != "0" && user != "root",
        "the runtime stage runs as root"
    );
    let entry = dockerfile_entrypoint();
    assert!(
        installed.contains(&format!("/usr/local/bin/{entry}")),
        "ENTRYPOINT {entry} is not installed"
    );
    assert!(
        !run[0].1.starts_with("rust"),
        "the runtime image is small, not the Rust toolchain"
    );
}
