-- order_items
create table order_items (
    id bigint generated always as identity primary key,
    order_id bigint not null references orders(id) on delete cascade, product_id bigint not null references products(id), quantity int not null, price_cents bigint not null
);
create index order_items_order_id_idx on order_items (order_id);
