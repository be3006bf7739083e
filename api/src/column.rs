//! The column of a per-node check in the matrix ([`CheckColumn`]): which
//! Service, DNS name or summary a [`CheckCell`](crate::CheckCell) is of.

use std::borrow::Borrow;
use std::convert::Infallible;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{DnsResult, RecordType, ServiceKind, ServiceResult};

/// The column of a check, e.g. `apiserver`, `clusterip/aggregator`,
/// `dns-a/kubernetes.default.svc.cluster.local.`, `mtu`.
///
/// On the wire it is that name, a plain string. Built from what it names
/// ([`CheckColumn::new`], [`CheckColumn::of_service`],
/// [`CheckColumn::of_dns`]) and read back with [`CheckColumn::kind`]; any
/// other string is kept as it is ([`ColumnKind::Other`]: a column of a newer
/// aggregator), so reading a matrix never fails on a column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckColumn(String);

/// What a [`CheckColumn`] names; its `Display` is the column's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind<'a> {
    /// The API server check (`apiserver`).
    Apiserver,
    /// A ClusterIP Service check, by the Service's name (`clusterip/NAME`).
    Clusterip(&'a str),
    /// A DNS lookup of a name (`dns-a/NAME`, `dns-srv/NAME`).
    Dns(RecordType, &'a str),
    /// The row's summary of its large Don't-Fragment echoes (`mtu`).
    Mtu,
    /// A name this version does not know.
    Other(&'a str),
}

const APISERVER: &str = "apiserver";
const CLUSTERIP: &str = "clusterip/";
const DNS_A: &str = "dns-a/";
const DNS_SRV: &str = "dns-srv/";
const MTU: &str = "mtu";

impl<'a> ColumnKind<'a> {
    /// What the column `name` names.
    pub fn parse(name: &'a str) -> Self {
        if name == APISERVER {
            ColumnKind::Apiserver
        } else if name == MTU {
            ColumnKind::Mtu
        } else if let Some(service) = name.strip_prefix(CLUSTERIP) {
            ColumnKind::Clusterip(service)
        } else if let Some(dns) = name.strip_prefix(DNS_A) {
            ColumnKind::Dns(RecordType::A, dns)
        } else if let Some(dns) = name.strip_prefix(DNS_SRV) {
            ColumnKind::Dns(RecordType::Srv, dns)
        } else {
            ColumnKind::Other(name)
        }
    }
}

/// The kinds of check summed up together (the CLI's table, the metrics'
/// `group` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckGroup {
    Apiserver,
    Clusterip,
    Dns,
    Mtu,
}

impl CheckGroup {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckGroup::Apiserver => "apiserver",
            CheckGroup::Clusterip => "clusterip",
            CheckGroup::Dns => "dns",
            CheckGroup::Mtu => "mtu",
        }
    }
}

impl ColumnKind<'_> {
    /// The group of the column (`None`: a column this version does not know).
    pub fn group(self) -> Option<CheckGroup> {
        match self {
            ColumnKind::Apiserver => Some(CheckGroup::Apiserver),
            ColumnKind::Clusterip(_) => Some(CheckGroup::Clusterip),
            ColumnKind::Dns(..) => Some(CheckGroup::Dns),
            ColumnKind::Mtu => Some(CheckGroup::Mtu),
            ColumnKind::Other(_) => None,
        }
    }
}

impl fmt::Display for ColumnKind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnKind::Apiserver => f.write_str(APISERVER),
            ColumnKind::Clusterip(service) => write!(f, "{CLUSTERIP}{service}"),
            ColumnKind::Dns(RecordType::A, name) => write!(f, "{DNS_A}{name}"),
            ColumnKind::Dns(RecordType::Srv, name) => write!(f, "{DNS_SRV}{name}"),
            ColumnKind::Mtu => f.write_str(MTU),
            ColumnKind::Other(name) => f.write_str(name),
        }
    }
}

impl CheckColumn {
    /// The column of `kind`.
    pub fn new(kind: ColumnKind<'_>) -> Self {
        CheckColumn(kind.to_string())
    }

    /// The column of a service check.
    pub fn of_service(service: &ServiceResult) -> Self {
        CheckColumn::new(match service.kind {
            ServiceKind::Apiserver => ColumnKind::Apiserver,
            ServiceKind::Clusterip => ColumnKind::Clusterip(&service.name),
        })
    }

    /// The column of a DNS check.
    pub fn of_dns(dns: &DnsResult) -> Self {
        CheckColumn::new(ColumnKind::Dns(dns.record, &dns.name))
    }

    /// What the column names.
    pub fn kind(&self) -> ColumnKind<'_> {
        ColumnKind::parse(&self.0)
    }

    /// The column's name, as on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CheckColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CheckColumn {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(CheckColumn(s.to_owned()))
    }
}

impl From<&str> for CheckColumn {
    fn from(s: &str) -> Self {
        CheckColumn(s.to_owned())
    }
}

impl From<String> for CheckColumn {
    fn from(s: String) -> Self {
        CheckColumn(s)
    }
}

impl From<ColumnKind<'_>> for CheckColumn {
    fn from(kind: ColumnKind<'_>) -> Self {
        CheckColumn::new(kind)
    }
}

/// A column reads as its name (`starts_with`, `len`...).
impl Deref for CheckColumn {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for CheckColumn {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for CheckColumn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for CheckColumn {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for CheckColumn {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<ColumnKind<'_>> for CheckColumn {
    fn eq(&self, other: &ColumnKind<'_>) -> bool {
        self.kind() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_read_back_as_they_were_built() {
        for kind in [
            ColumnKind::Apiserver,
            ColumnKind::Clusterip("aggregator"),
            ColumnKind::Dns(RecordType::A, "kubernetes.default.svc.cluster.local."),
            ColumnKind::Dns(RecordType::Srv, "_metrics._tcp.agents.netmatrix.svc."),
            ColumnKind::Mtu,
            ColumnKind::Other("future/thing"),
        ] {
            let column = CheckColumn::new(kind);
            assert_eq!(column.kind(), kind);
            let wire = serde_json::to_value(&column).unwrap();
            assert_eq!(wire, kind.to_string());
            assert_eq!(serde_json::from_value::<CheckColumn>(wire).unwrap(), column);
            assert_eq!(column.as_str().parse::<CheckColumn>().unwrap(), column);
        }
    }

    #[test]
    fn names_on_the_wire_are_unchanged() {
        let service = |kind, name: &str| ServiceResult {
            kind,
            name: name.into(),
            target: "10.96.0.1:443".into(),
            ok: true,
            reached: None,
            latency_ms: None,
            error: None,
        };
        assert_eq!(
            CheckColumn::of_service(&service(ServiceKind::Apiserver, "kubernetes")),
            "apiserver"
        );
        assert_eq!(
            CheckColumn::of_service(&service(ServiceKind::Clusterip, "kube-dns")),
            "clusterip/kube-dns"
        );
        let dns = |record| DnsResult {
            name: "kubernetes.default.svc.cluster.local.".into(),
            record,
            ok: true,
            latency_ms: None,
            answers: vec![],
            expected: vec![],
            pending: vec![],
            error: None,
        };
        assert_eq!(
            CheckColumn::of_dns(&dns(RecordType::A)),
            "dns-a/kubernetes.default.svc.cluster.local."
        );
        assert_eq!(
            CheckColumn::of_dns(&dns(RecordType::Srv)),
            "dns-srv/kubernetes.default.svc.cluster.local."
        );
        assert_eq!(CheckColumn::new(ColumnKind::Mtu), "mtu");
    }
}
