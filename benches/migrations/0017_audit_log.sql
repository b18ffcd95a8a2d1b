-- audit_log
create table audit_log (
    id bigint generated always as identity primary key,
    account_id bigint references accounts(id), action text not null, payload jsonb not null default '{}', at timestamptz not null default now()
);
create index audit_log_at_idx on audit_log (at);
