-- organizations
create table organizations (
    id bigint generated always as identity primary key,
    name text not null, slug text not null unique, created_at timestamptz not null default now()
);
insert into organizations (name, slug) select 'Org ' || g, 'org-' || g from generate_series(1, 10) g;
