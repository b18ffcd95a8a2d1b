-- accounts
create table accounts (
    id bigint generated always as identity primary key,
    email text not null unique, name text not null, created_at timestamptz not null default now()
);
insert into accounts (email, name) select 'user' || g || '@example.com', 'User ' || g from generate_series(1, 50) g;
