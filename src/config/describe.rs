//! The effective configuration, printed by `outpost check` as TOML.

use super::*;
use std::fmt::Write;

fn dur(d: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(d))
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", inner.join(", "))
}

fn describe_match(o: &mut String, table: &str, m: &MatchConfig) {
    let _ = writeln!(o, "[{table}]  # empty lists match everything");
    let _ = writeln!(
        o,
        "hosts = {}\npath_prefix = {}\npaths = {}\nmethods = {}",
        list(&m.hosts),
        list(&m.path_prefix),
        list(&m.paths),
        list(&m.methods)
    );
}

fn describe_headers(o: &mut String, table: &str, p: &HeaderPolicy) {
    for (side, rules) in [("request", &p.request), ("response", &p.response)] {
        if rules.is_empty() {
            continue;
        }
        let removed: Vec<&str> = rules.remove.iter().map(|h| h.as_str()).collect();
        let _ = writeln!(o, "[{table}.{side}]\nremove = {}", list(&removed));
        let set: Vec<String> = rules
            .set
            .iter()
            .map(|(n, v)| format!("{:?} = {:?}", n.as_str(), v.to_str().unwrap_or("")))
            .collect();
        let _ = writeln!(o, "set = {{ {} }}", set.join(", "));
    }
}

/// `[client_ip]` and `[rate_limit]`.
fn describe_traffic(c: &Config, o: &mut String) {
    let _ = writeln!(
        o,
        "[client_ip]\ntrusted_proxies = {}\nheader = \"{}\"\npass_forwarding_fields = \"{}\"\n",
        list(&c.client_ip.trusted_proxies),
        match c.client_ip.header {
            ForwardedHeader::XForwardedFor => "X-Forwarded-For",
            ForwardedHeader::Forwarded => "Forwarded",
        },
        match c.client_ip.pass_forwarding_fields {
            PassForwarding::Trusted => "trusted",
            PassForwarding::All => "all",
        }
    );
    let rl = &c.rate_limit;
    let _ = writeln!(
        o,
        "[rate_limit]\nallow = {}\nmax_keys = {}\n",
        list(&rl.allow),
        rl.max_keys
    );
    for (i, r) in rl.rules.iter().enumerate() {
        let per = match r.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        let key = match &r.key {
            LimitKey::Ip => "ip".to_string(),
            LimitKey::IpPath => "ip_path".to_string(),
            LimitKey::Header(h) => format!("header:{h}"),
        };
        let _ = writeln!(
            o,
            "[[rate_limit.rules]]  # rate_limit.rules[{i}]; every matching limit applies\nname = \"{}\"\nlimit = \"{}/{per}\"\nburst = {}\nkey = \"{key}\"\nonly_misses = {}",
            r.name, r.count, r.burst, r.only_misses
        );
        describe_match(o, "rate_limit.rules.match", &r.matcher);
        let _ = writeln!(o);
    }
}

/// `[tls]` and its certificates (paths as resolved against the config file's directory).
fn describe_tls(c: &Config, o: &mut String) {
    let t = &c.tls;
    let _ = writeln!(
        o,
        "[tls]{}\nh2 = {}\nreload_check = {}\n",
        if c.listen.https.is_empty() {
            "  # unused: no listen.https"
        } else {
            ""
        },
        t.h2,
        dur(t.reload_check)
    );
    for (i, cert) in t.certificates.iter().enumerate() {
        let _ = writeln!(
            o,
            "[[tls.certificates]]  # tls.certificates[{i}]\ncert = \"{}\"\nkey = \"{}\"",
            cert.cert.display(),
            cert.key.display()
        );
        if cert.names.is_empty() {
            let _ = writeln!(o, "# names: the certificate's DNS names");
        } else {
            let _ = writeln!(o, "names = {}", list(&cert.names));
        }
        let _ = writeln!(o, "default = {}\n", cert.default);
    }
}

/// Render `c` as TOML with every default filled in; the admin token is redacted.
pub(super) fn describe(c: &Config) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# effective configuration of {}", c.source.display());
    let _ = writeln!(
        o,
        "[node]\nname = \"{}\"\nthreads = {}\nshutdown_grace = {}\nwork_stealing = {}\nvia = {}\nlean_hits = {}\nupstream_keepalive_pool = {}\nupgrade_sock = \"{}\"\n",
        c.node.name,
        c.node.threads,
        dur(c.node.shutdown_grace),
        c.node.work_stealing,
        c.node.via,
        c.node.lean_hits,
        c.node.upstream_keepalive_pool,
        c.node.upgrade_sock.display()
    );
    let _ = writeln!(
        o,
        "[listen]\nhttp = {}\nhttps = {}\n",
        list(&c.listen.http),
        list(&c.listen.https)
    );
    describe_tls(c, &mut o);
    let _ = writeln!(
        o,
        "[admin]\nlisten = \"{}\"\nready_during_disk_scan = {}\ntoken = {}\n",
        c.admin.listen,
        c.admin.ready_during_disk_scan,
        if c.admin.token.is_some() {
            "\"<redacted>\""
        } else {
            "\"<none: admin calls refused>\""
        }
    );
    let _ = writeln!(o, "[metrics]\nlisten = \"{}\"\n", c.metrics.listen);
    let k = &c.cache;
    let _ = writeln!(
        o,
        "[cache]\ndir = \"{}\"\ntiers = \"{}\"\nmemory_size = {}\nmax_object_size = {}\ndisk_size = {}\ndisk_max_object_size = {}\nlock_wait_timeout = {}\nlock_age_timeout = {}\nheuristic_max_ttl = {}\nstream_fills = {}\npartial_size = {}\ntargeted_fields = {}\nstrip_targeted = {}\n",
        k.dir.display(),
        k.tiers.as_str(),
        k.memory_size,
        k.max_object_size,
        k.disk_size,
        k.disk_max_object_size,
        dur(k.lock_wait_timeout),
        dur(k.lock_age_timeout),
        dur(k.heuristic_max_ttl),
        k.stream_fills,
        k.partial_size,
        names(&k.targeted_fields),
        names(&k.strip_targeted)
    );
    for og in &c.origins {
        describe_origin(&mut o, og);
    }
    describe_shield(c, &mut o);
    describe_cluster(c, &mut o);
    describe_access_log(c, &mut o);
    let t = &c.tracing;
    let _ = writeln!(
        o,
        "[tracing]\nenabled = {}\nendpoint = \"{}\"\nprotocol = \"{}\"\nsample = {}\nservice_name = \"{}\"\ntimeout = {}\n",
        t.enabled,
        t.endpoint,
        if t.json { "http/json" } else { "http/protobuf" },
        t.sample,
        t.service_name,
        dur(t.timeout)
    );
    let tags: Vec<&str> = c.purge.tag_headers.iter().map(|h| h.as_str()).collect();
    let _ = writeln!(
        o,
        "[purge]\ntag_headers = {}\nstrip_tag_headers = {}\nlurker_interval = {}\n",
        list(&tags),
        c.purge.strip_tag_headers,
        dur(c.purge.lurker_interval)
    );
    let l = &c.limits;
    let _ = writeln!(
        o,
        "[limits]\nmax_connections = {}\nheader_timeout = {}\nbody_timeout = {}\nmax_header_bytes = {}\nmax_headers = {}\nmax_uri_bytes = {}\nmax_body_bytes = {}\n",
        l.max_connections,
        dur(l.header_timeout),
        dur(l.body_timeout),
        l.max_header_bytes,
        l.max_headers,
        l.max_uri_bytes,
        l.max_body_bytes
    );
    let z = &c.compression;
    let encodings: Vec<&str> = z.encodings.iter().map(|e| e.token()).collect();
    let _ = writeln!(
        o,
        "[compression]\nenabled = {}\nencodings = {}\ntypes = {}\nmin_size = {}\nbrotli_level = {}\ngzip_level = {}\nzstd_level = {}\n",
        z.enabled,
        list(&encodings),
        list(&z.types),
        z.min_size,
        z.brotli_level,
        z.gzip_level,
        z.zstd_level
    );
    describe_traffic(c, &mut o);
    describe_headers(&mut o, "headers", &c.headers);
    let _ = writeln!(o);
    for (i, r) in c.rules.iter().enumerate() {
        let _ = writeln!(o, "[[rules]]  # rules[{i}], checked in this order");
        let _ = writeln!(
            o,
            "name = \"{}\"\norigin = \"{}\"\naction = \"{}\"\nredirect_https = {}",
            r.name,
            c.origins[r.origin].name,
            match r.action {
                Action::Cache => "cache",
                Action::Bypass => "bypass",
            },
            r.redirect_https
        );
        let _ = writeln!(o, "shield = {}", r.shield);
        let _ = writeln!(o, "# freshness precedence: {}", precedence(r));
        describe_match(&mut o, "rules.match", &r.matcher);
        describe_headers(&mut o, "rules.headers", &r.headers);
        if r.action == Action::Cache {
            let _ = writeln!(o, "[rules.ttl]  # precedence: override > targeted fields (RFC 9213) > s-maxage > max-age > Expires > not_found/server_error (404/410, 5xx) > default > heuristic");
            if let Some(t) = r.ttl.override_ttl {
                let _ = writeln!(o, "override = {}", dur(t));
            }
            if let Some(t) = r.ttl.default {
                let _ = writeln!(o, "default = {}", dur(t));
            }
            let _ = writeln!(o, "heuristic = {}", r.ttl.heuristic);
            let _ = writeln!(
                o,
                "not_found = {}\nserver_error = {}",
                dur(r.ttl.not_found.unwrap_or_default()),
                dur(r.ttl.server_error.unwrap_or_default())
            );
            let _ = writeln!(
                o,
                "[rules.stale]  # defaults when the response names no stale-* window\nwhile_revalidate = {}\nif_error = {}  # stale when the origin cannot be reached: {}",
                dur(r.stale.while_revalidate),
                dur(r.stale.if_error),
                if r.stale.disconnected { "yes" } else { "no" }
            );
            let _ = writeln!(o, "[rules.key]");
            match &r.key.query {
                QueryMode::Full => {
                    let _ = writeln!(o, "query = \"full\"");
                }
                QueryMode::Ignore => {
                    let _ = writeln!(o, "query = \"ignore\"");
                }
                QueryMode::Sorted => {
                    let _ = writeln!(o, "query = \"sorted\"");
                }
                QueryMode::Keep(k) => {
                    let _ = writeln!(o, "query = \"keep\"\nquery_keep = {}", list(k));
                }
            }
            let _ = writeln!(
                o,
                "headers = {}",
                list(&r.key.headers.iter().map(|h| h.as_str()).collect::<Vec<_>>())
            );
            let status: Vec<String> = r.cacheable.status.iter().map(|s| s.to_string()).collect();
            let status = if r.cacheable.restrict_status {
                format!("status = [{}]", status.join(", "))
            } else {
                format!(
                    "# status unset: any final status with explicit freshness, and without it [{}]",
                    status.join(", ")
                )
            };
            let _ = writeln!(
                o,
                "[rules.cacheable]\n{status}\nset_cookie = {}\nauthorized = {}",
                r.cacheable.set_cookie, r.cacheable.authorized
            );
        }
        let _ = writeln!(o);
    }
    if !c.rules.iter().any(|r| {
        r.matcher.hosts.is_empty()
            && r.matcher.paths.is_empty()
            && r.matcher.path_prefix.is_empty()
            && r.matcher.methods.is_empty()
    }) {
        let _ = writeln!(o, "# no catch-all rule: unmatched requests use the built-in default (cache per RFC 9111, heuristic on, full query in the key)");
    }
    o
}

fn describe_origin(o: &mut String, og: &OriginConfig) {
    let _ = writeln!(o, "[[origins]]\nname = \"{}\"", og.name);
    if let [only] = og.servers.as_slice() {
        let _ = writeln!(o, "url = \"{}\"  # {}", only.url, only.addr);
    } else {
        let _ = writeln!(o, "servers = [");
        for s in &og.servers {
            let _ = writeln!(
                o,
                "  {{ url = \"{}\", weight = {} }},  # {}",
                s.url, s.weight, s.addr
            );
        }
        let _ = writeln!(o, "]");
    }
    let _ = writeln!(o, "balance = \"{}\"", og.balance.as_str());
    match &og.host {
        Some(h) => {
            let _ = writeln!(o, "host = \"{h}\"");
        }
        None => {
            let _ = writeln!(o, "# host: the client's Host header is forwarded");
        }
    }
    match &og.tls {
        Some(t) => {
            let _ = writeln!(o, "tls = true\nh2 = {}", og.h2);
            if let Some(sni) = &t.sni {
                let _ = writeln!(o, "sni = \"{sni}\"");
            }
            if let Some(ca) = &t.ca_file {
                let _ = writeln!(o, "ca_file = \"{}\"", ca.display());
            }
            if !t.verify {
                let _ = writeln!(o, "insecure = true  # certificates are NOT verified");
            }
        }
        None => {
            let _ = writeln!(o, "tls = false");
        }
    }
    let _ = writeln!(
        o,
        "connect_timeout = {}\nread_timeout = {}",
        dur(og.connect_timeout),
        dur(og.read_timeout)
    );
    match og.total_timeout {
        Some(t) => {
            let _ = writeln!(o, "total_timeout = {}", dur(t));
        }
        None => {
            let _ = writeln!(o, "# total_timeout: none");
        }
    }
    let _ = writeln!(
        o,
        "failure_backoff = {}\nkeepalive_timeout = {}\nretries = {}\nmax_fails = {}\nfail_timeout = {}",
        dur(og.failure_backoff),
        dur(og.keepalive_timeout),
        og.retries,
        og.max_fails,
        dur(og.fail_timeout)
    );
    if let Some(h) = &og.health_check {
        let status: Vec<String> = h.expect_status.iter().map(u16::to_string).collect();
        let _ = writeln!(
            o,
            "[origins.health_check]\npath = \"{}\"\ninterval = {}\ntimeout = {}\nexpect_status = [{}]\nhealthy_threshold = {}\nunhealthy_threshold = {}",
            h.path,
            dur(h.interval),
            dur(h.timeout),
            status.join(", "),
            h.healthy_threshold,
            h.unhealthy_threshold
        );
        if let Some(host) = &h.host {
            let _ = writeln!(o, "host = \"{host}\"");
        }
        if let Some(port) = h.port {
            let _ = writeln!(o, "port = {port}");
        }
    }
    let _ = writeln!(o);
}

fn describe_shield(c: &Config, o: &mut String) {
    let s = &c.shield;
    let edges: Vec<String> = s.trusted_edges.iter().map(|n| n.to_string()).collect();
    let edges: Vec<&str> = edges.iter().map(String::as_str).collect();
    match s.origin {
        Some(i) => {
            let _ = writeln!(
                o,
                "[shield]\norigin = \"{}\"\ndirect_when_down = {}\ntrusted_edges = {}\n",
                c.origins[i].name,
                s.direct_when_down,
                list(&edges)
            );
        }
        None => {
            let _ = writeln!(
                o,
                "[shield]\n# origin: none, this node fetches from origins directly\ntrusted_edges = {}\n",
                list(&edges)
            );
        }
    }
}

fn describe_cluster(c: &Config, o: &mut String) {
    let Some(k) = &c.cluster else {
        let _ = writeln!(o, "# [cluster]: none, purges stay on this node\n");
        return;
    };
    let _ = writeln!(
        o,
        "[cluster]\nnats_url = \"{}\"\nstream = \"{}\"  # subject {}\nretention = {}\nmax_lag = {}\nuntil_synced = \"{}\"",
        k.nats_url,
        k.stream,
        k.subject(),
        dur(k.retention),
        dur(k.max_lag),
        if k.revalidate_until_synced { "revalidate" } else { "serve" }
    );
    if let Some(var) = &k.token_env {
        let _ = writeln!(o, "token_env = \"{var}\"");
    }
    let _ = writeln!(o);
}

fn describe_access_log(c: &Config, o: &mut String) {
    let a = &c.access_log;
    let _ = writeln!(
        o,
        "[access_log]\nenabled = {}\npath = \"{}\"\nformat = \"{}\"\nsample = {}\nbuffer = {}\nrequest_id_header = \"{}\"\n",
        a.enabled,
        a.path
            .as_ref()
            .map_or("-".to_string(), |p| p.display().to_string()),
        match a.format {
            AccessLogFormat::Json => "json",
            AccessLogFormat::Combined => "combined",
        },
        a.sample,
        a.buffer,
        a.request_id_header.as_ref().map_or("", |h| h.as_str())
    );
}

/// A TOML list of header names.
fn names(list: &[HeaderName]) -> String {
    let shown: Vec<String> = list.iter().map(|n| format!("\"{}\"", n.as_str())).collect();
    format!("[{}]", shown.join(", "))
}

/// What decides a rule's freshness lifetimes, first match first.
fn precedence(r: &RuleConfig) -> String {
    let mut steps: Vec<String> = Vec::new();
    if let Some(t) = r.ttl.override_ttl {
        return format!("ttl.override ({}) over any origin field", dur(t));
    }
    for t in &r.ttl.targeted {
        steps.push(format!("{} (RFC 9213)", t.as_str()));
    }
    if r.ttl.targeted.is_empty() {
        steps.push("Cache-Control (targeted fields ignored: ttl.targeted = false)".into());
    } else {
        steps.push("Cache-Control".into());
    }
    steps.push("Expires (unless a targeted field decided)".into());
    if r.ttl.not_found.is_some() || r.ttl.server_error.is_some() {
        steps.push("ttl.not_found / ttl.server_error".into());
    }
    if let Some(d) = r.ttl.default {
        steps.push(format!("ttl.default ({})", dur(d)));
    }
    if r.ttl.heuristic {
        steps.push("Last-Modified heuristic".into());
    }
    steps.join(" > ")
}
