-- categories
create table categories (
    id bigint generated always as identity primary key,
    parent_id bigint references categories(id), name text not null
);
create index categories_parent_id_idx on categories (parent_id);
insert into categories (name) values ('books'), ('games'), ('tools'), ('garden');
