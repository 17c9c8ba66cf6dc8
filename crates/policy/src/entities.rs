//! Turning a request's principal and resources into Cedar entities with their parents.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use gatehouse_core::{ConnectionInfo, Identity, Resource};

use crate::PolicyError;

pub(crate) fn uid(ty: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let name = EntityTypeName::from_str(ty).map_err(|e| PolicyError::Schema(e.to_string()))?;
    Ok(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

type Attrs = Vec<(String, RestrictedExpression)>;

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

/// The entities of one request, each added once.
pub(crate) struct Builder<'a> {
    connections: &'a [ConnectionInfo],
    entities: HashMap<EntityUid, Entity>,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(connections: &'a [ConnectionInfo]) -> Self {
        Builder { connections, entities: HashMap::new() }
    }

    pub(crate) fn into_entities(self) -> impl Iterator<Item = Entity> {
        self.entities.into_values()
    }

    fn add(&mut self, uid: &EntityUid, attrs: Attrs, parents: Vec<EntityUid>, tags: Attrs) -> Result<(), PolicyError> {
        if !self.entities.contains_key(uid) {
            let e = Entity::new_with_tags(uid.clone(), attrs, parents, tags)
                .map_err(|e| PolicyError::Request(format!("entity {uid}: {e}")))?;
            self.entities.insert(uid.clone(), e);
        }
        Ok(())
    }

    /// The principal, in each of its groups.
    pub(crate) fn principal(&mut self, who: &Identity) -> Result<EntityUid, PolicyError> {
        let me = uid(who.kind.entity_type(), &who.name)?;
        let mut parents = Vec::with_capacity(who.groups.len());
        for g in &who.groups {
            let group = uid("Group", g)?;
            self.add(&group, vec![], vec![], vec![])?;
            parents.push(group);
        }
        self.add(&me, vec![], parents, vec![])?;
        Ok(me)
    }

    /// A connection's `type` attribute and tags, which every resource inside it carries: from
    /// the registry, or type "" and no tags if the caller did not pass the connection.
    fn inherited(&self, connection: &str) -> (Attrs, Attrs) {
        let info = self.connections.iter().find(|c| c.name == connection);
        let kind = info.map_or("", |c| c.kind.as_str());
        let tags = info.map(|c| c.tags.iter().map(|(k, v)| (k.clone(), string(v))).collect()).unwrap_or_default();
        (vec![("type".into(), string(kind))], tags)
    }

    fn connection(&mut self, name: &str) -> Result<EntityUid, PolicyError> {
        let me = uid("Connection", name)?;
        let (attrs, tags) = self.inherited(name);
        self.add(&me, attrs, vec![], tags)?;
        Ok(me)
    }

    /// The resource and every parent up to its connection.
    pub(crate) fn resource(&mut self, r: &Resource) -> Result<EntityUid, PolicyError> {
        match r {
            Resource::Connection { connection } => self.connection(connection),
            Resource::Table { connection, schema, table } => {
                let parent = self.connection(connection)?;
                let me = uid("Table", &r.entity_id())?;
                let (mut attrs, tags) = self.inherited(connection);
                attrs.extend([("schema".into(), string(schema)), ("name".into(), string(table))]);
                self.add(&me, attrs, vec![parent], tags)?;
                Ok(me)
            }
            Resource::Column { connection, schema, table, column } => {
                let parent = self.resource(&Resource::Table {
                    connection: connection.clone(),
                    schema: schema.clone(),
                    table: table.clone(),
                })?;
                let me = uid("Column", &r.entity_id())?;
                let (mut attrs, tags) = self.inherited(connection);
                attrs.extend([
                    ("schema".into(), string(schema)),
                    ("table".into(), string(table)),
                    ("name".into(), string(column)),
                ]);
                self.add(&me, attrs, vec![parent], tags)?;
                Ok(me)
            }
            Resource::Key { connection, key } => self.chain("Key", connection, key, ':'),
            Resource::Path { connection, path } | Resource::KubeObject { connection, path } => {
                let rest = path.trim_start_matches('/');
                if let Some(seg) = rest.split('/').find(|s| is_dot_segment(s)) {
                    return Err(PolicyError::Request(format!(
                        "{} has a {seg:?} segment; paths must be normalised before they are decided",
                        r.entity_ref()
                    )));
                }
                self.chain(r.entity_type(), connection, rest, '/')
            }
            Resource::Api { area } => {
                let me = uid("Api", area)?;
                self.add(&me, vec![], vec![], vec![])?;
                Ok(me)
            }
        }
    }

    /// `ty::"conn/a:b:c"` in `ty::"conn/a:b"` in `ty::"conn/a"` in `Connection::"conn"`: each
    /// prefix ending before a separator is a parent.
    fn chain(&mut self, ty: &str, connection: &str, rest: &str, sep: char) -> Result<EntityUid, PolicyError> {
        let mut parent = self.connection(connection)?;
        let (attrs, tags) = self.inherited(connection);
        let ends = rest.match_indices(sep).map(|(i, _)| i).filter(|i| *i > 0).chain([rest.len()]);
        for end in ends {
            let prefix = rest.get(..end).unwrap_or_default();
            let me = uid(ty, &format!("{connection}/{prefix}"))?;
            self.add(&me, attrs.clone(), vec![parent], tags.clone())?;
            parent = me;
        }
        Ok(parent)
    }
}

/// `.` and `..` (also percent-encoded): a path with one could escape the prefix a policy names.
fn is_dot_segment(seg: &str) -> bool {
    let decoded = seg.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}
