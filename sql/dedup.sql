-- Near-duplicate clusters (MinHash LSH over the kept notes).

-- name: schema
CREATE TABLE IF NOT EXISTS dedup_clusters (
    build_id   VARCHAR NOT NULL,
    cluster_id VARCHAR NOT NULL, -- note_id of the cluster's first note in build order
    source     VARCHAR NOT NULL,
    note_id    VARCHAR NOT NULL,
    first      BOOLEAN NOT NULL  -- the note that stays under --recipe strict
);

-- name: members
-- Clusters with their notes, from the seq pairs staged by Rust.
INSERT INTO dedup_clusters
SELECT ?, f.note_id, c.source, c.note_id, m.seq = m.root
FROM stage_dedup m JOIN corpus c ON c.seq = m.seq JOIN corpus f ON f.seq = m.root;

-- name: stage
CREATE OR REPLACE TEMP TABLE stage_dedup (seq BIGINT NOT NULL, root BIGINT NOT NULL);

-- name: drop_near_duplicates
-- --recipe strict: the near duplicates leave the corpus and get their reason.
UPDATE note_decisions SET reason = 'near_duplicate'
WHERE build_id = ? AND (source, note_id) IN (
    SELECT c.source, c.note_id FROM stage_dedup m JOIN corpus c ON c.seq = m.seq WHERE m.seq <> m.root
);

-- name: remove_near_duplicates
DELETE FROM corpus WHERE seq IN (SELECT seq FROM stage_dedup WHERE seq <> root);

-- name: drop_stage
DROP TABLE IF EXISTS stage_dedup;
