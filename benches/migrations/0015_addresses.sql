-- addresses
create table addresses (
    id bigint generated always as identity primary key,
    account_id bigint not null references accounts(id), line1 text not null, city text not null, country char(2) not null
);
create index addresses_account_id_idx on addresses (account_id);
