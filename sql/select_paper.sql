-- The paper's corpus recipe, up to the rules that need normalized text (`empty` and
-- `exact_duplicate` are decided in Rust, in build order). Rules apply in this order and each
-- dropped note gets exactly one reason: a note dropped by an earlier rule does not take part
-- in later ones (an ISERROR row never supersedes a draft).

-- name: metadata
-- Every staged note in build order with the metadata that note_decisions and corpus repeat;
-- `reasons` fills in the set rules' reasons. A plain scan keeps insertion order, so no
-- sort is needed (a join would not keep it: the reasons are applied by UPDATE, in place).
CREATE OR REPLACE TEMP TABLE stage_reasons AS
SELECT rowid AS ord, source, CAST(NULL AS VARCHAR) AS reason, note_id, subject_id, hadm_id,
       category
FROM stage_notes;

-- name: reasons
-- Parameter 1: apply the era rule (MIMIC-IV-Note is also being built and ICUSTAYS is known).
UPDATE stage_reasons SET reason = r.reason
FROM (
    WITH carevue_only AS (
        -- Patients whose every ICU stay was charted in CareVue; everyone else overlaps
        -- MIMIC-IV.
        SELECT subject_id FROM stage_icustays
        GROUP BY subject_id HAVING bool_and(dbsource = 'carevue')
    ),
    task_subjects AS (
        SELECT DISTINCT n.subject_id
        FROM stage_task_rows t JOIN stage_notes n ON n.source = 'mimic-iii' AND n.row_id = t.row_id
    ),
    first_rules AS (
        SELECT rowid AS ord, source, subject_id, category, charttime, storetime, cgid,
            CASE
                WHEN iserror THEN 'error_flag'
                WHEN ?::BOOLEAN AND source = 'mimic-iii'
                     AND category IN ('Radiology', 'Discharge summary')
                     AND subject_id NOT IN (SELECT subject_id FROM carevue_only) THEN 'era_overlap'
                WHEN subject_id IN (SELECT subject_id FROM task_subjects) THEN 'task_patient'
                WHEN subject_id IN (SELECT subject_id FROM stage_excluded WHERE source IS NULL)
                     OR (source = 'mimic-iii' AND subject_id IN
                         (SELECT subject_id FROM stage_excluded WHERE source = 'mimic-iii'))
                     OR (source = 'mimic-iv' AND subject_id IN
                         (SELECT subject_id FROM stage_excluded WHERE source = 'mimic-iv'))
                     THEN 'excluded_subject'
            END AS reason
        FROM stage_notes
    ),
    drafts AS (
        -- Re-saved MIMIC-III notes, as the paper's released code finds them: within one
        -- (CHARTTIME, SUBJECT_ID, CATEGORY, CGID) keep the latest STORETIME, ties to the
        -- first row. A group is collapsed only when every note in it has a STORETIME; one
        -- without keeps them all. A NULL CHARTTIME or CGID never groups: system notes such
        -- as radiology reports share CHARTTIME without being drafts of each other.
        SELECT ord,
               row_number() OVER (grp ORDER BY storetime DESC, ord) AS version,
               count(*) OVER grp = count(storetime) OVER grp AS all_stored
        FROM first_rules
        WHERE reason IS NULL AND source = 'mimic-iii' AND charttime IS NOT NULL
              AND cgid IS NOT NULL
        WINDOW grp AS (PARTITION BY charttime, subject_id, category, cgid)
    )
    SELECT f.ord, coalesce(f.reason, 'draft_superseded') AS reason
    FROM first_rules f LEFT JOIN drafts d USING (ord)
    WHERE f.reason IS NOT NULL OR (d.all_stored AND d.version > 1)
) r
WHERE stage_reasons.ord = r.ord;

-- name: drop_notes
-- stage_reasons holds all that later steps need of stage_notes: its memory goes back.
DROP TABLE stage_notes;

-- name: task_rows_unmatched
-- Task ROW_IDs that are not in NOTEEVENTS: their patients cannot be removed.
SELECT count(DISTINCT t.row_id) FROM stage_task_rows t
WHERE t.row_id NOT IN (SELECT row_id FROM stage_notes WHERE source = 'mimic-iii' AND row_id IS NOT NULL);

-- name: note_rows
-- Every note in build order (stage_reasons was written in that order and insertion order is
-- preserved), with the reason from the set rules (NULL: still in) and the metadata that
-- note_decisions and corpus repeat; the text comes from the file. Streamed once.
SELECT ord, source, reason, note_id, subject_id, hadm_id, category FROM stage_reasons;

-- name: begin_writing
-- The corpus is written in one transaction, on a connection of its own (see
-- normalize_and_decide).
-- One DuckDB thread while it is: ehrprep's own threads read, normalize and append, and
-- DuckDB's workers only spun beside them waiting for work (at 1,000,000 notes on two
-- cores the stage used 10-20% less CPU with one, and its output is the same).
SET threads = 1;
BEGIN TRANSACTION;

-- name: finish_writing
COMMIT;

-- name: late_reasons
-- The reasons decided on normalized text (`empty`, `task_text_overlap`, `exact_duplicate`),
-- by `ord`; every other note the set rules left in was kept.
CREATE OR REPLACE TEMP TABLE stage_late (ord BIGINT NOT NULL, reason VARCHAR NOT NULL);

-- name: apply_late_reasons
UPDATE stage_reasons SET reason = l.reason FROM stage_late l WHERE stage_reasons.ord = l.ord;

-- name: insert_decisions
-- Parameter 1: the build id. A plain scan of stage_reasons keeps build order (insertion
-- order is preserved), so the rows need no sort.
INSERT INTO note_decisions
SELECT ?, source, note_id, subject_id, hadm_id, category, coalesce(reason, 'kept')
FROM stage_reasons;

-- name: stage_overlaps
-- The task documents each `task_text_overlap` note holds, by `ord`, in build order.
CREATE OR REPLACE TEMP TABLE stage_overlaps (
    ord BIGINT NOT NULL, task VARCHAR NOT NULL, task_doc_id VARCHAR NOT NULL,
    containment DOUBLE NOT NULL
);

-- name: insert_overlaps
-- Parameter 1: the build id. A plain scan of stage_overlaps keeps build order; the join
-- only looks up each note's release and id.
INSERT INTO task_overlap
SELECT ?, r.source, r.note_id, o.task, o.task_doc_id, o.containment
FROM stage_overlaps o, stage_reasons r
WHERE r.ord = o.ord
ORDER BY o.rowid;

-- name: done_writing
-- Once the corpus is appended: DuckDB's threads are back for writing note_decisions, whose
-- row groups it compresses in parallel (at 1,000,000 notes, 4% faster than one thread).
RESET threads;
