-- cart_items
create table cart_items (
    id bigint generated always as identity primary key,
    cart_id bigint not null references carts(id) on delete cascade, product_id bigint not null references products(id), quantity int not null check (quantity > 0)
);
create index cart_items_cart_id_idx on cart_items (cart_id);
