-- Invalidation driven by Postgres itself (app/replication): every committed change to a cached
-- table, made by anyone, reaches the cache through this publication and a logical replication
-- slot. A publication can be created whatever wal_level is; only the slot needs logical.
CREATE PUBLICATION cacheside FOR TABLE samples;

-- One row per slot the follower created. synced stays false from the slot's creation until every
-- cached view was retired once: changes made before the slot existed were never streamed, so a
-- follower that finds synced false (its creator died in between) retires everything again.
-- confirmed_lsn is the furthest position a follower confirmed, recorded before confirming: a slot
-- that has confirmed more was made anew (or advanced) by something else, and changes before its
-- new start may have been skipped.
CREATE TABLE cache_replication_slots (
    slot_name     text        PRIMARY KEY,
    synced        boolean     NOT NULL DEFAULT false,
    confirmed_lsn pg_lsn,
    created_at    timestamptz NOT NULL DEFAULT now()
);

---- create above / drop below ----

DROP TABLE cache_replication_slots;
DROP PUBLICATION cacheside;
