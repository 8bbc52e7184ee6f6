use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub service_account_id: String,
    pub org_id: String,
    pub display_name: String,
    /// SHA-256 of the whole token; the plaintext is never stored.
    pub token_hash: Vec<u8>,
    /// Scope names separated by single spaces.
    pub scopes: String,
    pub hint: String,
    pub created_at: DateTimeUtc,
    pub created_by: String,
    pub expire_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    pub revoked_by: Option<String>,
    pub last_used_at: Option<DateTimeUtc>,
    pub revoke_reason: Option<String>,
    pub previous_token_id: Option<String>,
    /// Canonical CIDRs separated by single spaces; empty: unrestricted.
    pub allowed_cidrs: String,
    pub last_used_app_id: Option<String>,
    pub last_used_client_ip: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::service_account::Entity",
        from = "Column::ServiceAccountId",
        to = "super::service_account::Column::Id"
    )]
    ServiceAccount,
}

impl Related<super::service_account::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ServiceAccount.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
