-- orders
create table orders (
    id bigint generated always as identity primary key,
    account_id bigint not null references accounts(id), status text not null default 'pending', total_cents bigint not null default 0, placed_at timestamptz
);
create index orders_account_id_idx on orders (account_id);
