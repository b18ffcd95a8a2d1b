-- projects
create table projects (
    id bigint generated always as identity primary key,
    organization_id bigint not null references organizations(id), name text not null, archived boolean not null default false
);
create index projects_organization_id_idx on projects (organization_id);
