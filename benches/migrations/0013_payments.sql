-- payments
create table payments (
    id bigint generated always as identity primary key,
    order_id bigint not null references orders(id), provider text not null, amount_cents bigint not null, succeeded boolean not null default false
);
create index payments_order_id_idx on payments (order_id);
