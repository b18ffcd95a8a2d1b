-- feature_flags
create table feature_flags (
    id bigint generated always as identity primary key,
    key text not null unique, enabled boolean not null default false, rollout int not null default 0
);
insert into feature_flags (key, enabled) values ('checkout_v2', true), ('dark_mode', false);
