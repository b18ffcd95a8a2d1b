-- webhooks
create table webhooks (
    id bigint generated always as identity primary key,
    organization_id bigint not null references organizations(id), url text not null, secret text not null, active boolean not null default true
);
create index webhooks_organization_id_idx on webhooks (organization_id);
