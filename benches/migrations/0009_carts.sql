-- carts
create table carts (
    id bigint generated always as identity primary key,
    account_id bigint not null references accounts(id), updated_at timestamptz not null default now()
);
create index carts_account_id_idx on carts (account_id);
