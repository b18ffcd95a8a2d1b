-- api_keys
create table api_keys (
    id bigint generated always as identity primary key,
    account_id bigint not null references accounts(id), prefix text not null unique, hashed text not null, last_used_at timestamptz
);
create index api_keys_account_id_idx on api_keys (account_id);
