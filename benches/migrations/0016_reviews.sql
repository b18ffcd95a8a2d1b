-- reviews
create table reviews (
    id bigint generated always as identity primary key,
    product_id bigint not null references products(id), account_id bigint not null references accounts(id), rating int not null check (rating between 1 and 5), body text
);
create index reviews_product_id_idx on reviews (product_id);
