-- shipments
create table shipments (
    id bigint generated always as identity primary key,
    order_id bigint not null references orders(id), carrier text, tracking_code text, shipped_at timestamptz
);
create index shipments_order_id_idx on shipments (order_id);
