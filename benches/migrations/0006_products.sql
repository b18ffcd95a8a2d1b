-- products
create table products (
    id bigint generated always as identity primary key,
    sku text not null unique, title text not null, price_cents bigint not null check (price_cents >= 0), stock int not null default 0
);
create index products_title_idx on products (title);
insert into products (sku, title, price_cents, stock) select 'SKU-' || g, 'Product ' || g, g * 100, g from generate_series(1, 50) g;
