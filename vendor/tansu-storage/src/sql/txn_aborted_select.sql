-- Added for Lambda: the aborted transactions with records in a partition
-- from an offset (inclusive) to another (exclusive), for a fetch.
select

ta.producer,
ta.offset_start

from

cluster c
join topic t on t.cluster = c.id
join topition tp on tp.topic = t.id
join txn_aborted ta on ta.topition = tp.id

where

c.name = $1
and t.name = $2
and tp.partition = $3
and ta.offset_end >= $4
and ta.offset_start < $5

order by ta.offset_start;
