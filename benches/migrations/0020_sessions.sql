-- sessions
create table sessions (
    id bigint generated always as identity primary key,
    account_id bigint not null references accounts(id) on delete cascade, token_hash text not null unique, expires_at timestamptz not null
);
create index sessions_expires_at_idx on sessions (expires_at);
