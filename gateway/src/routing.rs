//! Where each topic, consumer group and transactional id lives.
//!
//! A [`Router`] is built from the `[[routes]]` of the config: rules tried in order,
//! the first whose pattern matches wins. Topic rules may rename: the client-visible
//! prefix `from` becomes `to` on the backend. The router answers both ways, client
//! name to (cluster, backend name) and back, and [`validate`] rejects rule sets whose
//! answers would be ambiguous or whose rules could never match.
//!
//! The router in force can be swapped at run time ([`RouterCell`]); each request
//! takes the one current when it arrives.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::Problem;

/// One `[[routes]]` entry as written in the config or sent to the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_ids: Option<String>,
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rename: Option<Rename>,
}

/// The client-visible prefix `from` is `to` on the backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    pub from: String,
    pub to: String,
}

/// What a route is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Topics,
    Groups,
    TransactionalIds,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Topics => "topics",
            Kind::Groups => "groups",
            Kind::TransactionalIds => "transactional_ids",
        }
    }
}

impl RouteConfig {
    /// The route's kind and pattern, if it names exactly one.
    fn kind(&self) -> Option<(Kind, &str)> {
        match (&self.topics, &self.groups, &self.transactional_ids) {
            (Some(p), None, None) => Some((Kind::Topics, p)),
            (None, Some(p), None) => Some((Kind::Groups, p)),
            (None, None, Some(p)) => Some((Kind::TransactionalIds, p)),
            _ => None,
        }
    }
}

/// A name pattern: exact, prefix (`abc*`), or a glob of `*` and `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Exact,
    /// Everything up to the single trailing `*`.
    Prefix(usize),
    Pattern,
}

impl Glob {
    pub fn new(text: &str) -> Self {
        let wild = |c: char| c == '*' || c == '?';
        let shape = match text.find(wild) {
            None => Shape::Exact,
            Some(i) if i == text.len() - 1 && text.ends_with('*') => Shape::Prefix(i),
            Some(_) => Shape::Pattern,
        };
        Self {
            text: text.to_string(),
            shape,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, name: &str) -> bool {
        match self.shape {
            Shape::Exact => self.text == name,
            Shape::Prefix(n) => name.as_bytes().starts_with(&self.text.as_bytes()[..n]),
            Shape::Pattern => glob_match(self.text.as_bytes(), name.as_bytes()),
        }
    }

    /// Whether every name `other` matches, this matches too. Sound, not complete:
    /// `true` is always right, `false` may miss an exotic inclusion.
    pub fn covers(&self, other: &Glob) -> bool {
        covers(self.text.as_bytes(), other.text.as_bytes())
    }

    /// Whether some name matches both.
    pub fn overlaps(&self, other: &Glob) -> bool {
        let (a, b) = (self.text.as_bytes(), other.text.as_bytes());
        let mut memo = vec![None; (a.len() + 1) * (b.len() + 1)];
        overlap(a, b, 0, 0, &mut memo)
    }
}

/// Iterative glob match with single-star backtracking: linear for one `*`,
/// O(n*m) worst case, never exponential.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// `a` covers `b` if `a` matches `b` read as a word in which `b`'s `*` can only be
/// consumed by `a`'s `*`, and `b`'s `?` by `a`'s `?` or `*`.
fn covers(a: &[u8], b: &[u8]) -> bool {
    let (n, m) = (a.len(), b.len());
    // reach[i][j]: a[..i] can consume b[..j].
    let mut reach = vec![vec![false; m + 1]; n + 1];
    reach[0][0] = true;
    for i in 0..=n {
        for j in 0..=m {
            if !reach[i][j] {
                continue;
            }
            if i < n && a[i] == b'*' {
                reach[i + 1][j] = true; // star takes nothing more
                if j < m {
                    reach[i][j + 1] = true; // star takes b[j], whatever it is
                }
            }
            if i < n && j < m {
                let ok = match (a[i], b[j]) {
                    (b'*', _) => false,
                    (_, b'*') => false,
                    (b'?', _) => true,
                    (_, b'?') => false,
                    (x, y) => x == y,
                };
                if ok {
                    reach[i + 1][j + 1] = true;
                }
            }
        }
    }
    reach[n][m]
}

fn overlap(a: &[u8], b: &[u8], i: usize, j: usize, memo: &mut Vec<Option<bool>>) -> bool {
    let key = i * (b.len() + 1) + j;
    if let Some(known) = memo[key] {
        return known;
    }
    let out = if i == a.len() && j == b.len() {
        true
    } else if i < a.len() && a[i] == b'*' {
        overlap(a, b, i + 1, j, memo) || (j < b.len() && overlap(a, b, i, j + 1, memo))
    } else if j < b.len() && b[j] == b'*' {
        overlap(a, b, i, j + 1, memo) || (i < a.len() && overlap(a, b, i + 1, j, memo))
    } else if i < a.len() && j < b.len() {
        (a[i] == b[j] || a[i] == b'?' || b[j] == b'?') && overlap(a, b, i + 1, j + 1, memo)
    } else {
        false
    };
    memo[key] = Some(out);
    out
}

#[derive(Debug, Clone)]
struct TopicRule {
    glob: Glob,
    cluster: usize,
    from: String,
    to: String,
}

/// Where a client-visible topic lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub cluster: usize,
    /// The backend's name for it.
    pub backend: Cow<'a, str>,
}

impl Target<'_> {
    pub fn renamed(&self) -> bool {
        matches!(self.backend, Cow::Owned(_))
    }
}

/// Compiled routes.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
    topics: Vec<TopicRule>,
    groups: Vec<(Glob, usize)>,
    transactional_ids: Vec<(Glob, usize)>,
    fallback: usize,
    renames: bool,
}

impl Router {
    /// Builds a router; `routes` must have passed [`validate`] against `clusters`.
    /// With no topic routes and a single cluster, every topic lives there.
    pub fn new(routes: &[RouteConfig], clusters: &[String]) -> Self {
        let index = |name: &str| clusters.iter().position(|c| c == name).unwrap_or(0);
        let mut topics = Vec::new();
        let mut groups = Vec::new();
        let mut transactional_ids = Vec::new();
        for r in routes {
            let Some((kind, pattern)) = r.kind() else { continue };
            let glob = Glob::new(pattern);
            let cluster = index(&r.cluster);
            match kind {
                Kind::Topics => {
                    let (from, to) = r
                        .rename
                        .as_ref()
                        .map(|x| (x.from.clone(), x.to.clone()))
                        .unwrap_or_default();
                    topics.push(TopicRule { glob, cluster, from, to });
                }
                Kind::Groups => groups.push((glob, cluster)),
                Kind::TransactionalIds => transactional_ids.push((glob, cluster)),
            }
        }
        if topics.is_empty() && clusters.len() == 1 {
            topics.push(TopicRule {
                glob: Glob::new("*"),
                cluster: 0,
                from: String::new(),
                to: String::new(),
            });
        }
        let fallback = topics
            .iter()
            .find(|t| t.glob.as_str() == "*")
            .or(topics.first())
            .map_or(0, |t| t.cluster);
        let renames = topics.iter().any(|t| t.from != t.to);
        Self {
            routes: routes.to_vec(),
            topics,
            groups,
            transactional_ids,
            fallback,
            renames,
        }
    }

    /// The routes as configured.
    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }

    /// Whether any route renames topics.
    pub fn renames(&self) -> bool {
        self.renames
    }

    /// The cluster and backend name of a client-visible topic; `None`: no route.
    pub fn topic<'a>(&self, name: &'a str) -> Option<Target<'a>> {
        let rule = self.topics.iter().find(|r| r.glob.matches(name))?;
        let backend = if rule.from == rule.to {
            Cow::Borrowed(name)
        } else {
            // Validation guarantees `from` prefixes every name the rule matches.
            let rest = name.strip_prefix(rule.from.as_str())?;
            Cow::Owned(format!("{}{rest}", rule.to))
        };
        Some(Target {
            cluster: rule.cluster,
            backend,
        })
    }

    /// The client-visible name of a backend topic of `cluster`, if a route maps
    /// one to it; topics no route reaches are hidden from clients.
    pub fn client_name<'a>(&self, cluster: usize, backend: &'a str) -> Option<Cow<'a, str>> {
        for rule in self.topics.iter().filter(|r| r.cluster == cluster) {
            let Some(rest) = backend.strip_prefix(rule.to.as_str()) else {
                continue;
            };
            let client: Cow<'a, str> = if rule.from == rule.to {
                Cow::Borrowed(backend)
            } else {
                Cow::Owned(format!("{}{rest}", rule.from))
            };
            // The name must route back here, or a client could not use it.
            if self
                .topic(&client)
                .is_some_and(|t| t.cluster == cluster && t.backend == backend)
            {
                return Some(client);
            }
        }
        None
    }

    /// The home cluster of a consumer group: its membership lives there.
    pub fn group(&self, group: &str) -> usize {
        self.groups
            .iter()
            .find(|(g, _)| g.matches(group))
            .map_or(self.fallback, |(_, c)| *c)
    }

    /// The cluster a transactional id is pinned to.
    pub fn transactional_id(&self, id: &str) -> usize {
        self.transactional_ids
            .iter()
            .find(|(g, _)| g.matches(id))
            .map_or(self.fallback, |(_, c)| *c)
    }

    /// The cluster for requests that name no topic, group or transaction
    /// (ACLs, quotas, broker configs, idempotent producer ids).
    pub fn default_cluster(&self) -> usize {
        self.fallback
    }
}

/// Every problem with `routes` given the known `clusters`, each with its field.
pub fn validate(routes: &[RouteConfig], clusters: &[String]) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |field: String, message: String| out.push(Problem { field, message });
    let mut seen: Vec<(usize, Kind, Glob, &RouteConfig)> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let base = format!("routes[{i}]");
        let Some((kind, pattern)) = r.kind() else {
            problem(
                base,
                "names none or several of topics, groups, transactional_ids; give exactly one".into(),
            );
            continue;
        };
        let field = format!("{base}.{}", kind.key());
        if pattern.is_empty() {
            problem(field.clone(), "is empty; use a name, a prefix such as \"orders.*\", or \"*\"".into());
            continue;
        }
        if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
            problem(field.clone(), format!("'{pattern}' contains white space"));
        }
        if !clusters.contains(&r.cluster) {
            problem(
                format!("{base}.cluster"),
                format!(
                    "'{}' is not a cluster; known clusters: {}",
                    r.cluster,
                    clusters.join(", ")
                ),
            );
        }
        let glob = Glob::new(pattern);
        if let Some(rename) = &r.rename {
            if kind != Kind::Topics {
                problem(format!("{base}.rename"), "only topic routes can rename; remove it".into());
            } else {
                if rename.from.contains(['*', '?']) || rename.to.contains(['*', '?']) {
                    problem(format!("{base}.rename"), "from and to are plain prefixes; remove '*' and '?'".into());
                } else if !pattern.starts_with(rename.from.as_str()) {
                    problem(
                        format!("{base}.rename.from"),
                        format!(
                            "'{}' does not begin the pattern '{pattern}', so some matching names lack it; use a pattern such as \"{}*\"",
                            rename.from, rename.from
                        ),
                    );
                }
                if rename.from == rename.to {
                    problem(format!("{base}.rename"), "from and to are equal; remove the rename".into());
                }
            }
        }
        if let Some((j, _, earlier, _)) = seen
            .iter()
            .find(|(_, k, g, _)| *k == kind && g.covers(&glob))
        {
            problem(
                field.clone(),
                format!(
                    "'{pattern}' never matches: routes[{j}] ('{}') comes first and matches every name it would; move it above or remove it",
                    earlier.as_str()
                ),
            );
        }
        seen.push((i, kind, glob, r));
    }
    // Each backend topic must have one client-visible name.
    let topic_rules: Vec<_> = seen.iter().filter(|(_, k, _, _)| *k == Kind::Topics).collect();
    for (a, (i, _, ga, ra)) in topic_rules.iter().enumerate() {
        for (j, _, gb, rb) in topic_rules.iter().skip(a + 1) {
            if ra.cluster != rb.cluster {
                continue;
            }
            let pair = |r: &RouteConfig| r.rename.as_ref().map(|x| (x.from.clone(), x.to.clone())).unwrap_or_default();
            let (pa, pb) = (pair(ra), pair(rb));
            let same = pa == pb || (pa.0 == pa.1 && pb.0 == pb.1);
            if same {
                continue;
            }
            let backend = |g: &Glob, (from, to): &(String, String)| {
                Glob::new(&format!("{to}{}", g.as_str().strip_prefix(from.as_str()).unwrap_or(g.as_str())))
            };
            if backend(ga, &pa).overlaps(&backend(gb, &pb)) {
                out.push(Problem {
                    field: format!("routes[{j}]"),
                    message: format!(
                        "ambiguous: routes[{i}] and routes[{j}] give topics of cluster '{}' two client-visible names; make their backend names disjoint (rename.to) or route them to different clusters",
                        ra.cluster
                    ),
                });
            }
        }
    }
    let topic_routes = routes.iter().filter(|r| r.topics.is_some()).count();
    if topic_routes == 0 && clusters.len() > 1 {
        out.push(Problem {
            field: "routes".into(),
            message: format!(
                "{} clusters but no topic route; add [[routes]] with topics = \"PATTERN\" and cluster = \"NAME\"",
                clusters.len()
            ),
        });
    }
    out
}

/// The router in force, swappable while requests are served.
#[derive(Debug)]
pub struct RouterCell {
    current: RwLock<Arc<Router>>,
}

impl RouterCell {
    pub fn new(router: Router) -> Self {
        Self {
            current: RwLock::new(Arc::new(router)),
        }
    }

    pub fn get(&self) -> Arc<Router> {
        match self.current.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set(&self, router: Router) {
        let mut slot = match self.current.write() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        *slot = Arc::new(router);
    }
}

/// Route changes at run time: from the admin API, or a config file re-read.
#[derive(Debug)]
pub struct RouteControl {
    cell: Arc<RouterCell>,
    clusters: Vec<String>,
    config_path: Option<std::path::PathBuf>,
    /// Routes from the config or the admin API.
    configured: std::sync::Mutex<Vec<RouteConfig>>,
    /// Topics switched to their mirror by a promote or failover; they come first
    /// and outlive route changes and reloads.
    switched: std::sync::Mutex<Vec<RouteConfig>>,
}

fn switch_route(topic: &str, cluster: &str, backend: &str) -> RouteConfig {
    RouteConfig {
        topics: Some(topic.to_string()),
        groups: None,
        transactional_ids: None,
        cluster: cluster.to_string(),
        rename: (topic != backend).then(|| Rename { from: topic.to_string(), to: backend.to_string() }),
    }
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Why routes were not changed.
#[derive(Debug)]
pub enum RouteChangeError {
    /// The routes (or the re-read file) have problems; nothing changed.
    Invalid(Vec<Problem>),
    /// Causeway was started without a config file, so there is nothing to re-read.
    NoConfigFile,
}

impl RouteControl {
    pub fn new(cell: Arc<RouterCell>, clusters: Vec<String>, config_path: Option<std::path::PathBuf>) -> Self {
        let configured = cell.get().routes().to_vec();
        Self {
            cell,
            clusters,
            config_path,
            configured: std::sync::Mutex::new(configured),
            switched: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Problems of the configured routes, and of the switched ones. A switched
    /// route names one topic and comes first, so it may give its mirror a second
    /// name: the mirror's own name still routes, and listings show the switched one.
    fn problems(&self, switched: &[RouteConfig], configured: &[RouteConfig]) -> Vec<Problem> {
        let mut out = validate(configured, &self.clusters);
        if switched.is_empty() {
            return out;
        }
        out.extend(validate(switched, &self.clusters).into_iter().map(|mut p| {
            p.field = format!("switched {}", p.field);
            p
        }));
        out
    }

    /// The router in force.
    pub fn router(&self) -> Arc<Router> {
        self.cell.get()
    }

    /// Whether [`RouteControl::switch_topic`] would be accepted.
    pub fn check_switch(&self, topic: &str, cluster: &str, backend: &str) -> Result<(), RouteChangeError> {
        let mut switched = vec![switch_route(topic, cluster, backend)];
        switched.extend(locked(&self.switched).iter().filter(|r| r.topics.as_deref() != Some(topic)).cloned());
        let problems = self.problems(&switched, &locked(&self.configured));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RouteChangeError::Invalid(problems))
        }
    }

    /// Routes the client-visible `topic` to `backend` on `cluster` (a mirror that
    /// was promoted or failed over), ahead of every other route.
    pub fn switch_topic(&self, topic: &str, cluster: &str, backend: &str) -> Result<(), RouteChangeError> {
        let route = switch_route(topic, cluster, backend);
        let mut switched = locked(&self.switched).clone();
        switched.retain(|r| r.topics.as_deref() != Some(topic));
        switched.insert(0, route);
        let configured = locked(&self.configured).clone();
        let problems = self.problems(&switched, &configured);
        if !problems.is_empty() {
            return Err(RouteChangeError::Invalid(problems));
        }
        let all: Vec<RouteConfig> = switched.iter().chain(configured.iter()).cloned().collect();
        *locked(&self.switched) = switched;
        self.cell.set(Router::new(&all, &self.clusters));
        tracing::info!(topic, cluster, backend, "topic switched to its mirror");
        Ok(())
    }

    /// The routes in force.
    pub fn current(&self) -> Vec<RouteConfig> {
        self.cell.get().routes().to_vec()
    }

    /// Replaces the routes if they are valid; clients see the change at their next
    /// metadata refresh, and connections stay open.
    pub fn replace(&self, routes: Vec<RouteConfig>) -> Result<Vec<RouteConfig>, RouteChangeError> {
        let switched = locked(&self.switched).clone();
        // A list read back from GET /routes holds the switched routes too.
        let configured: Vec<RouteConfig> = routes.into_iter().filter(|r| !switched.contains(r)).collect();
        let problems = self.problems(&switched, &configured);
        if !problems.is_empty() {
            return Err(RouteChangeError::Invalid(problems));
        }
        let all: Vec<RouteConfig> = switched.iter().chain(configured.iter()).cloned().collect();
        self.cell.set(Router::new(&all, &self.clusters));
        *locked(&self.configured) = configured;
        tracing::info!(routes = all.len(), "routes changed");
        Ok(all)
    }

    /// Re-reads the config file and applies its routes. Clusters cannot change
    /// while running: a file whose clusters differ is refused.
    pub fn reload(&self) -> Result<Vec<RouteConfig>, RouteChangeError> {
        let path = self.config_path.as_ref().ok_or(RouteChangeError::NoConfigFile)?;
        let config = crate::config::Config::load(path).map_err(|e| match e {
            crate::config::ConfigError::Invalid { problems, .. } => RouteChangeError::Invalid(problems),
            other => RouteChangeError::Invalid(vec![Problem {
                field: path.display().to_string(),
                message: other.to_string(),
            }]),
        })?;
        let clusters = config.cluster_names();
        if clusters != self.clusters {
            return Err(RouteChangeError::Invalid(vec![Problem {
                field: "clusters".into(),
                message: format!(
                    "changed from [{}] to [{}]; adding or removing clusters needs a restart",
                    self.clusters.join(", "),
                    clusters.join(", ")
                ),
            }]));
        }
        self.replace(config.routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(pattern: &str, cluster: &str) -> RouteConfig {
        RouteConfig {
            topics: Some(pattern.into()),
            groups: None,
            transactional_ids: None,
            cluster: cluster.into(),
            rename: None,
        }
    }

    fn renamed(pattern: &str, cluster: &str, from: &str, to: &str) -> RouteConfig {
        RouteConfig {
            rename: Some(Rename {
                from: from.into(),
                to: to.into(),
            }),
            ..topics(pattern, cluster)
        }
    }

    fn clusters() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn globs_match_exact_prefix_and_patterns() {
        assert!(Glob::new("orders").matches("orders"));
        assert!(!Glob::new("orders").matches("orders2"));
        assert!(Glob::new("orders.*").matches("orders."));
        assert!(Glob::new("orders.*").matches("orders.eu"));
        assert!(!Glob::new("orders.*").matches("order"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("*-audit").matches("x-audit"));
        assert!(!Glob::new("*-audit").matches("x-audit2"));
        assert!(Glob::new("eu-?.*").matches("eu-1.t"));
        assert!(!Glob::new("eu-?.*").matches("eu-12.t"));
        assert!(Glob::new("a*b*c").matches("aXbYbZc"));
        assert!(!Glob::new("a*b*c").matches("aXbYbZ"));
    }

    #[test]
    fn coverage_and_overlap() {
        assert!(Glob::new("*").covers(&Glob::new("orders.*")));
        assert!(Glob::new("orders.*").covers(&Glob::new("orders.eu")));
        assert!(Glob::new("o*").covers(&Glob::new("or?ers")));
        assert!(!Glob::new("orders.*").covers(&Glob::new("*")));
        assert!(!Glob::new("a?").covers(&Glob::new("a*")));
        assert!(Glob::new("*x").overlaps(&Glob::new("a*")));
        assert!(!Glob::new("a*").overlaps(&Glob::new("b*")));
        assert!(!Glob::new("fin.*").overlaps(&Glob::new("orders.*")));
        assert!(Glob::new("a?c").overlaps(&Glob::new("*c")));
    }

    #[test]
    fn first_match_wins_and_renames_both_ways() {
        let routes = vec![
            topics("orders.*", "a"),
            renamed("payments.*", "a", "payments.", "fin.payments."),
            topics("*", "b"),
        ];
        assert!(validate(&routes, &clusters()).is_empty(), "{:?}", validate(&routes, &clusters()));
        let r = Router::new(&routes, &clusters());
        assert_eq!(r.topic("orders.eu").map(|t| (t.cluster, t.backend.into_owned())), Some((0, "orders.eu".into())));
        let t = r.topic("payments.eu").expect("routed");
        assert_eq!((t.cluster, t.backend.as_ref(), t.renamed()), (0, "fin.payments.eu", true));
        assert_eq!(r.topic("other").map(|t| t.cluster), Some(1));
        assert_eq!(r.client_name(0, "fin.payments.eu").as_deref(), Some("payments.eu"));
        assert_eq!(r.client_name(0, "orders.x").as_deref(), Some("orders.x"));
        assert_eq!(r.client_name(0, "stray"), None, "no route reaches it");
        assert_eq!(r.client_name(1, "orders.x"), None, "orders.* routes to a, not b");
        assert_eq!(r.client_name(1, "other").as_deref(), Some("other"));
        assert_eq!(r.group("g"), 1, "catch-all topic route's cluster");
        assert_eq!(r.default_cluster(), 1);
    }

    #[test]
    fn no_route_means_no_topic() {
        let routes = vec![topics("orders.*", "a"), topics("logs", "b")];
        let r = Router::new(&routes, &clusters());
        assert_eq!(r.topic("other"), None);
        assert_eq!(r.group("any"), 0, "first route's cluster without a catch-all");
    }

    #[test]
    fn a_single_cluster_without_routes_takes_everything() {
        let r = Router::new(&[], &["only".into()]);
        assert_eq!(r.topic("x").map(|t| t.cluster), Some(0));
        assert_eq!(r.client_name(0, "x").as_deref(), Some("x"));
        assert!(validate(&[], &["only".into()]).is_empty());
        assert!(!validate(&[], &clusters()).is_empty());
    }

    #[test]
    fn validation_names_each_problem() {
        let shadowed = vec![topics("*", "a"), topics("orders.*", "b")];
        let p = validate(&shadowed, &clusters());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "routes[1].topics");
        assert!(p[0].message.contains("never matches"), "{}", p[0].message);

        let unknown = vec![topics("*", "zzz")];
        assert_eq!(validate(&unknown, &clusters())[0].field, "routes[0].cluster");

        let bad_from = vec![renamed("orders.*", "a", "legacy.", ""), topics("*", "b")];
        assert_eq!(validate(&bad_from, &clusters())[0].field, "routes[0].rename.from");

        let ambiguous = vec![renamed("legacy.*", "a", "legacy.", ""), topics("*", "a")];
        let p = validate(&ambiguous, &clusters());
        assert!(p.iter().any(|p| p.message.contains("ambiguous")), "{p:?}");

        let two_kinds = vec![RouteConfig {
            groups: Some("g".into()),
            ..topics("t", "a")
        }];
        assert_eq!(validate(&two_kinds, &clusters())[0].field, "routes[0]");

        let groups_only_differ_by_kind = vec![
            topics("*", "a"),
            RouteConfig {
                topics: None,
                groups: Some("*".into()),
                ..topics("", "b")
            },
        ];
        assert!(validate(&groups_only_differ_by_kind, &clusters()).is_empty());
    }
}
