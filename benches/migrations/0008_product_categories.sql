-- product_categories
create table product_categories (
    id bigint generated always as identity primary key,
    product_id bigint not null references products(id), category_id bigint not null references categories(id), unique (product_id, category_id)
);
create index product_categories_category_id_idx on product_categories (category_id);
