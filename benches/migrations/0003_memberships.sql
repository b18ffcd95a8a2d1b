-- memberships
create table memberships (
    id bigint generated always as identity primary key,
    account_id bigint not null references accounts(id) on delete cascade, organization_id bigint not null references organizations(id) on delete cascade, role text not null default 'member', unique (account_id, organization_id)
);
create index memberships_organization_id_idx on memberships (organization_id);
