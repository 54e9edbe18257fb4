//! The deployment artifacts under deploy/ stay true to the code: every configuration passes
//! `outpost check`, every YAML file parses, the Kubernetes objects carry what a node needs
//! (probes on the admin listener, a volume claim for the disk tier, a disruption budget,
//! resources, non-root), the compose demo wires two edges to a shield, the Dockerfile builds
//! with cmake and runs as a non-root user with a health check, and the systemd unit verifies.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde::Deserialize;
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Files under deploy/ whose name ends with one of `exts`.
fn deploy_files(exts: &[&str]) -> Vec<PathBuf> {
    files_under(&deploy_dir())
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| exts.contains(&x))
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a (multi-document) YAML file.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn toml_table(path: &Path) -> toml::Table {
    read(path)
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `url` with its host replaced by 127.0.0.1 (names of compose services and cluster DNS do not
/// resolve here, and origin hosts are resolved when a configuration is loaded).
fn local_url(url: &str) -> String {
    let mut u = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    u.set_host(Some("127.0.0.1")).expect("set host");
    u.as_str().trim_end_matches('/').to_string()
}

/// A deploy/ configuration as `outpost check` can take it here: origin hosts made local (the
/// NATS URL of `[cluster]` is not resolved when a configuration loads: it stays).
fn checkable(mut table: toml::Table) -> String {
    if let Some(toml::Value::Array(origins)) = table.get_mut("origins") {
        for origin in origins.iter_mut().filter_map(|o| o.as_table_mut()) {
            if let Some(toml::Value::String(url)) = origin.get_mut("url") {
                *url = local_url(url);
            }
            if let Some(toml::Value::Array(servers)) = origin.get_mut("servers") {
                for server in servers.iter_mut() {
                    match server {
                        toml::Value::String(url) => *url = local_url(url),
                        toml::Value::Table(t) => {
                            if let Some(toml::Value::String(url)) = t.get_mut("url") {
                                *url = local_url(url);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    toml::to_string(&table).expect("serialize TOML")
}

/// The URLs of the servers of `[[origins]]` pool `name` in a node configuration.
fn pool_servers(table: &toml::Table, name: &str) -> (Vec<String>, Option<String>) {
    let pool = table["origins"]
        .as_array()
        .and_then(|o| {
            o.iter()
                .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name))
        })
        .unwrap_or_else(|| panic!("no [[origins]] pool named {name:?}"));
    let mut urls: Vec<String> = pool
        .get("url")
        .and_then(|u| u.as_str())
        .map(String::from)
        .into_iter()
        .collect();
    for s in pool
        .get("servers")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
    {
        match s {
            toml::Value::String(u) => urls.push(u.clone()),
            t => urls.extend(t.get("url").and_then(|u| u.as_str()).map(String::from)),
        }
    }
    let balance = pool
        .get("balance")
        .and_then(|b| b.as_str())
        .map(String::from);
    (urls, balance)
}

fn str_at<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v:?}"))
}

/// The port of a `host:port` listen address in a TOML table (`[admin] listen`).
fn listen_port(table: &toml::Table, section: &str) -> u64 {
    let addr = table[section]["listen"].as_str().expect("listen address");
    addr.rsplit(':').next().unwrap().parse().expect("port")
}

fn seconds(duration: &str) -> u64 {
    humantime::parse_duration(duration)
        .unwrap_or_else(|e| panic!("{duration}: {e}"))
        .as_secs()
}

#[test]
fn every_toml_under_deploy_passes_outpost_check() {
    let files = deploy_files(&["toml"]);
    assert!(files.len() >= 8, "TOML files under deploy/: {files:?}");
    for path in files {
        let out = run_check(&checkable(toml_table(&path)));
        assert!(
            out.status.success(),
            "{}: outpost check failed:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_yaml_under_deploy_parses() {
    let files = deploy_files(&["yaml", "yml"]);
    assert!(files.len() >= 10, "YAML files under deploy/: {files:?}");
    for path in files {
        let docs = yaml_docs(&path);
        assert!(!docs.is_empty(), "{}: no document", path.display());
        for d in docs {
            assert!(
                d.is_mapping(),
                "{}: a document is not a map",
                path.display()
            );
        }
    }
}

#[test]
fn kubernetes_statefulset_has_probes_volume_claim_resources_and_runs_as_non_root() {
    let base = deploy_dir().join("kubernetes/base");
    let config = toml_table(&base.join("outpost.toml"));
    let sts = yaml_docs(&base.join("statefulset.yaml")).remove(0);
    assert_eq!(sts["kind"], "StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 1, "one node per region");
    let pod = &sts["spec"]["template"];
    let spec = &pod["spec"];
    let c = &spec["containers"][0];
    let port = |name: &str| -> u64 {
        c["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    // probes on the admin listener of the node's configuration
    assert_eq!(port("admin"), listen_port(&config, "admin"));
    assert_eq!(port("metrics"), listen_port(&config, "metrics"));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    // Prometheus scrapes the metrics listener
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(
        str_at(&ann["prometheus.io/port"], "prometheus.io/port"),
        port("metrics").to_string()
    );
    // the admin token from a Secret, under the variable the configuration names
    let token_env = config["admin"]["token_env"].as_str().expect("token_env");
    let env = c["env"].as_sequence().expect("env");
    let token = env
        .iter()
        .find(|e| e["name"] == token_env)
        .unwrap_or_else(|| panic!("no {token_env} in env"));
    let secret_ref = &token["valueFrom"]["secretKeyRef"];
    let secret = yaml_docs(&base.join("secret.yaml")).remove(0);
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], secret_ref["name"]);
    assert!(!secret["stringData"][str_at(&secret_ref["key"], "key")].is_null());
    // resources
    for kind in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(
                !c["resources"][kind][r].is_null(),
                "resources.{kind}.{r} missing"
            );
        }
    }
    // non-root, read-only root file system, the cache volume writable from a claim template
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert!(spec["securityContext"]["runAsUser"]
        .as_u64()
        .is_some_and(|u| u > 0));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    let claim_name = str_at(&claim["metadata"]["name"], "claim name");
    assert!(!claim["spec"]["resources"]["requests"]["storage"].is_null());
    let cache_dir = config["cache"]["dir"].as_str().expect("cache.dir");
    let mount = c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == claim_name)
        .expect("the claim is mounted");
    assert_eq!(mount["mountPath"], cache_dir, "the claim holds cache.dir");
    assert_ne!(mount["readOnly"], true);
    // a stop waits for the preStop hook and then node.shutdown_grace
    let grace = seconds(config["node"]["shutdown_grace"].as_str().expect("grace"));
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .and_then(|cmd| cmd.last())
        .and_then(|s| s.as_str())
        .map_or(0, |s| s.parse::<u64>().expect("sleep seconds"));
    let termination = spec["terminationGracePeriodSeconds"].as_u64().expect("set");
    assert!(
        termination >= pre_stop + grace,
        "terminationGracePeriodSeconds {termination} < preStop {pre_stop} + shutdown_grace {grace}"
    );
    // every region's configuration keeps the listeners, cache directory and grace in line
    for overlay in std::fs::read_dir(deploy_dir().join("kubernetes/overlays")).expect("overlays") {
        let path = overlay.expect("entry").path().join("outpost.toml");
        let t = toml_table(&path);
        assert_eq!(
            listen_port(&t, "admin"),
            port("admin"),
            "{}",
            path.display()
        );
        assert_eq!(
            listen_port(&t, "metrics"),
            port("metrics"),
            "{}",
            path.display()
        );
        assert_eq!(
            t["cache"]["dir"].as_str(),
            Some(cache_dir),
            "{}",
            path.display()
        );
        assert_eq!(t["admin"]["token_env"].as_str(), Some(token_env));
        let g = seconds(t["node"]["shutdown_grace"].as_str().expect("grace"));
        assert!(termination >= pre_stop + g, "{}", path.display());
    }
}

#[test]
fn kubernetes_base_has_services_and_a_disruption_budget_and_regions_name_their_node() {
    let k8s = deploy_dir().join("kubernetes");
    let pod_labels = yaml_docs(&k8s.join("base/statefulset.yaml")).remove(0)["spec"]["template"]
        ["metadata"]["labels"]
        .clone();
    let selects_pods = |selector: &Value| {
        selector
            .as_mapping()
            .expect("selector")
            .iter()
            .all(|(k, v)| pod_labels[k.as_str().unwrap()] == *v)
    };
    let pdb = yaml_docs(&k8s.join("base/pdb.yaml")).remove(0);
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    assert!(selects_pods(&pdb["spec"]["selector"]["matchLabels"]));
    assert!(!pdb["spec"]["minAvailable"].is_null() || !pdb["spec"]["maxUnavailable"].is_null());
    let services = yaml_docs(&k8s.join("base/service.yaml"));
    assert!(services
        .iter()
        .all(|s| s["kind"] == "Service" && selects_pods(&s["spec"]["selector"])));
    assert!(services.iter().any(|s| s["spec"]["clusterIP"] == "None"));

    // every kustomization names files that exist
    let mut names = Vec::new();
    for path in files_under(&k8s)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
    {
        let k = yaml_docs(&path).remove(0);
        let dir = path.parent().unwrap();
        let mut listed: Vec<&Value> = k["resources"]
            .as_sequence()
            .expect("resources")
            .iter()
            .collect();
        for gen in k["configMapGenerator"].as_sequence().into_iter().flatten() {
            listed.extend(gen["files"].as_sequence().into_iter().flatten());
        }
        for patch in k["patches"].as_sequence().into_iter().flatten() {
            listed.push(&patch["path"]);
        }
        for item in listed {
            let target = dir.join(str_at(item, "kustomization entry"));
            assert!(
                target.is_file() || target.join("kustomization.yaml").is_file(),
                "{}: {} does not exist",
                path.display(),
                target.display()
            );
        }
        if dir.join("outpost.toml").is_file()
            && dir.parent().is_some_and(|p| p.ends_with("overlays"))
        {
            names.push(toml_table(&dir.join("outpost.toml"))["node"]["name"].clone());
        }
    }
    assert!(names.len() >= 2, "overlays: {names:?}");
    let mut unique = names.clone();
    unique.sort_by_key(|n| n.to_string());
    unique.dedup();
    assert_eq!(
        unique.len(),
        names.len(),
        "node names must be unique: {names:?}"
    );

    // kustomize itself, when kubectl is here (it builds offline)
    match Command::new("kubectl").arg("kustomize").arg(&k8s).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let kinds: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
                .map(|d| Value::deserialize(d).expect("rendered YAML")["kind"].clone())
                .collect();
            let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
            assert_eq!(count("StatefulSet"), names.len(), "{kinds:?}");
            assert_eq!(count("PodDisruptionBudget"), names.len(), "{kinds:?}");
        }
        Err(e) => eprintln!("kubectl not available ({e}): kustomize build skipped"),
    }
}

#[test]
fn compose_runs_origin_shield_two_edges_and_nats_and_the_edges_go_through_the_shield() {
    let compose_file = deploy_dir().join("docker-compose.yml");
    let compose = yaml_docs(&compose_file).remove(0);
    let services = &compose["services"];
    for s in ["origin", "shield", "edge-a", "edge-b", "nats"] {
        assert!(services[s].is_mapping(), "no service {s}");
    }
    let nats_cmd = format!("{:?}", services["nats"]["command"]);
    assert!(
        nats_cmd.contains("-js"),
        "NATS without JetStream: {nats_cmd}"
    );
    // each node's configuration, as mounted
    let config_of = |service: &str| -> toml::Table {
        let mount = services[service]["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .filter_map(|v| v.as_str())
            .find(|v| v.contains(":/etc/outpost/outpost.toml"))
            .unwrap_or_else(|| panic!("{service}: no configuration mounted"));
        let file = mount.split(':').next().unwrap();
        toml_table(&compose_file.parent().unwrap().join(file))
    };
    let shield = config_of("shield");
    let mut names = vec![shield["node"]["name"].clone()];
    let subnet = str_at(
        &compose["networks"]["cdn"]["ipam"]["config"][0]["subnet"],
        "subnet",
    );
    let trusted = shield["shield"]["trusted_edges"]
        .as_array()
        .expect("trusted_edges");
    assert!(
        trusted.iter().any(|t| t.as_str() == Some(subnet)),
        "the shield does not trust the edges' network {subnet}: {trusted:?}"
    );
    let shield_port = shield["listen"]["http"][0]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .expect("shield listen port")
        .to_string();
    for edge in ["edge-a", "edge-b"] {
        let t = config_of(edge);
        names.push(t["node"]["name"].clone());
        let pool = t["shield"]["origin"].as_str().expect("[shield] origin");
        let (servers, balance) = pool_servers(&t, pool);
        assert_eq!(
            servers,
            vec![format!("http://shield:{shield_port}")],
            "{edge}: the shield pool"
        );
        assert_eq!(balance.as_deref(), Some("ketama"), "{edge}");
        let cluster = t["cluster"].as_table().expect("[cluster]");
        assert!(cluster["nats_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("nats://nats:")));
        assert!(services[edge]["networks"]
            .as_sequence()
            .is_some_and(|n| n.iter().any(|x| x == "cdn")));
    }
    let mut unique = names.clone();
    unique.sort_by_key(|n| n.to_string());
    unique.dedup();
    assert_eq!(unique.len(), 3, "node names must be unique: {names:?}");
}

#[test]
fn dockerfile_builds_with_cmake_and_runs_non_root_with_a_healthcheck() {
    let text = read(&deploy_dir().join("Dockerfile"));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a builder and a runtime stage");
    let builder = &lines[stages[0]..stages[1]];
    let runtime = &lines[stages[1]..];
    assert!(lines[stages[0]].contains("rust:") && lines[stages[0]].contains("bookworm"));
    assert!(builder
        .iter()
        .any(|l| l.contains("apt-get install") && l.contains("cmake")));
    assert!(builder
        .iter()
        .any(|l| l.contains("cargo build --release --locked")));
    assert!(lines[stages[1]].contains("debian:bookworm-slim"));
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    let user = user.split(':').next().unwrap().trim();
    assert!(!["root", "0"].contains(&user), "USER {user}");
    assert!(runtime.iter().any(|l| l.starts_with("HEALTHCHECK")));
    assert!(text.contains("/healthz"));
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("VOLUME") && l.contains("/var/cache/outpost")));
    assert!(runtime.contains(&"STOPSIGNAL SIGTERM"));
    assert!(runtime.iter().any(|l| l.starts_with("EXPOSE")));
    let ignore = read(&deploy_dir().parent().unwrap().join(".dockerignore"));
    assert!(ignore
        .lines()
        .any(|l| l.trim().trim_end_matches('/') == "target"));
    // the image's own configuration serves on every interface from the volume
    let image_config = toml_table(&deploy_dir().join("docker/outpost.toml"));
    assert_eq!(
        image_config["cache"]["dir"].as_str(),
        Some("/var/cache/outpost")
    );
    assert!(text.contains(&format!(
        "127.0.0.1:{}/healthz",
        listen_port(&image_config, "admin")
    )));
}

#[test]
fn systemd_unit_verifies() {
    let unit = read(&deploy_dir().join("systemd/outpost.service"));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("KillSignal=SIGTERM"));
    // systemd-analyze wants the binary to exist: point the unit at the one under test
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outpost.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/outpost", &outpost_bin().to_string_lossy()),
    )
    .expect("write unit");
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("systemd-analyze not available ({e}): unit not verified"),
    }
}
