-- Added for Lambda: keeps an aborted transaction's offset range per
-- partition before its produce offsets are deleted.
insert into txn_aborted (topition, producer, offset_start, offset_end)

select distinct

txn_tp.topition,
p.id,
txn_po.offset_start,
txn_po.offset_end

from

cluster c
join producer p on p.cluster = c.id
join producer_epoch pe on pe.producer = p.id
join txn on txn.cluster = c.id and txn.producer = p.id
join txn_detail txn_d on txn_d."transaction" = txn.id and txn_d.producer_epoch = pe.id
join txn_topition txn_tp on txn_tp.txn_detail = txn_d.id
join txn_produce_offset txn_po on txn_po.txn_topition = txn_tp.id

where

c.name = $1
and txn.name = $2
and p.id = $3
and pe.epoch = $4
and txn_po.offset_start is not null
and txn_po.offset_end is not null;
