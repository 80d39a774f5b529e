-- Added for Lambda: the records each aborted transaction wrote to a
-- partition, for the aborted transactions a read-committed fetch lists.
create table if not exists txn_aborted (
    id integer primary key autoincrement,
    topition integer references topition (id) on delete cascade,
    producer integer not null,
    offset_start integer not null,
    offset_end integer not null,
    created_at datetime default current_timestamp not null
);

create index if not exists txn_aborted_by_topition on txn_aborted (topition, offset_start);
