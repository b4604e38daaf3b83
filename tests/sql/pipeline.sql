-- The pipeline's structure (dependencies, definitions, headings) and removing data and tables
-- with everything downstream.
CREATE EXTENSION IF NOT EXISTS datajoint;
DROP SCHEMA IF EXISTS casc CASCADE;
DROP SCHEMA IF EXISTS casc_copy CASCADE;
SELECT dj.declare('casc.Subject', 'manual', $$
# Experimental subject
subject_id : int32
---
sex = "U" : enum('M', 'F', 'U')   # as recorded
weight = null : float32
$$);
SELECT dj.declare('casc.Rig', 'lookup', 'rig : varchar(8)', contents => '[["A"]]');
SELECT dj.declare('casc.Session', 'manual', $$
-> Subject
session : int16
---
-> [nullable] Rig
started = CURRENT_TIMESTAMP : datetime
index(started)
$$);
SELECT dj.declare('casc.Pair', 'computed', $$
-> Session
-> Subject.proj(partner='subject_id')
---
score : float32
$$);
SELECT dj.declare('casc.Pair.Detail', 'part', E'-> master\nk : int16');
SELECT dj.declare('casc.Tag', 'manual', E'-> Subject\ntag : varchar(8)');
SELECT dj.declare('casc.Tag.Note', 'part', E'-> master\n-> Pair\n---\nnote : varchar(32)');

-- A table outside DataJoint that references itself does not disturb the graph.
CREATE TABLE public.dj_emp (id int PRIMARY KEY, boss int REFERENCES public.dj_emp);
-- Dependencies, one row per foreign key.
SELECT * FROM dj.parents('casc.Pair');
SELECT * FROM dj.children('casc.Subject');
SELECT class_name, tier FROM dj.ancestors('casc.Tag.Note');
SELECT class_name, tier FROM dj.descendants('casc.Session');
SELECT class_name, tier FROM dj.topological_order('casc');
-- Tables are named by class or by SQL name alike.
SELECT count(*) FROM dj.parents('casc.__pair');
SELECT count(*) FROM dj.parents('"casc"."__pair__detail"');
SELECT * FROM dj.parents('casc.Nothing');
SELECT * FROM dj.parents('not a name');

-- Definitions back from the catalog; declaring them again gives the same tables.
SELECT dj.describe(format('casc.%s', class_name)) FROM dj.topological_order('casc');
SELECT * FROM dj.heading('casc.Session');
SELECT count(*) AS redeclared FROM dj.topological_order('casc') t,
  LATERAL dj.declare('casc_copy.' || t.class_name, t.tier, dj.describe('casc.' || t.class_name));
SELECT t.class_name, dj.describe('casc.' || t.class_name) = dj.describe('casc_copy.' || t.class_name) AS same
  FROM dj.topological_order('casc') t;

-- Diagrams: Mermaid, Graphviz DOT, and a laid-out SVG picture, tiers drawn as DataJoint draws them.
SELECT dj.diagram(ARRAY['casc']);
SELECT dj.diagram(ARRAY['casc.Session', 'casc.Pair', 'casc.Pair.Detail'], 'dot');
SELECT svg LIKE '<?xml%<svg%</svg>%' AS is_svg,
       (SELECT bool_and(strpos(svg, '>' || class_name || '<') > 0) FROM dj.tables('casc')) AS every_table_drawn,
       strpos(svg, '<ellipse') > 0 AS computed_as_ellipse
  FROM dj.diagram(ARRAY['casc'], 'svg') AS svg;
SELECT dj.diagram(ARRAY['casc'], 'png');
SELECT dj.diagram(ARRAY['nowhere.Thing']);

-- Deleting follows the dependencies; previews count without deleting.
INSERT INTO casc.subject (subject_id, sex) VALUES (1, 'M'), (2, 'F'), (3, 'F');
INSERT INTO casc.session (subject_id, session, rig) VALUES (1, 1, 'A'), (1, 2, NULL), (2, 1, 'A'), (3, 1, NULL);
INSERT INTO casc.__pair SELECT s.subject_id, s.session, p.subject_id, 0.5 FROM casc.session s, casc.subject p;
INSERT INTO casc.__pair__detail SELECT subject_id, session, partner, 0 FROM casc.__pair;
INSERT INTO casc.tag VALUES (3, 'x');
INSERT INTO casc.tag__note VALUES (3, 'x', 1, 3, 'n');
SELECT * FROM dj.delete_preview('casc.Subject', 'subject_id = 1');
SELECT * FROM dj.delete_preview('casc.Subject', key => '[{"subject_id": 2}, {"subject_id": 3}]');
SELECT * FROM dj.delete('casc.Session', key => '{"subject_id": 1, "session": 2}');
SELECT count(*) AS pairs_left FROM casc.__pair;
-- Part integrity: a part's rows go only with its master's.
SELECT * FROM dj.delete('casc.Pair.Detail');
SELECT * FROM dj.delete('casc.Pair', 'partner = 3');
SELECT count(*) AS pairs_unchanged FROM casc.__pair;
SELECT * FROM dj.delete('casc.Pair', 'partner = 3', part_integrity => 'ignore');
SELECT * FROM dj.delete('casc.Pair.Detail', 'k = 99', part_integrity => 'ignore');
-- Restrictions are checked conditions on the table's attributes, nothing else.
SELECT * FROM dj.delete('casc.Subject', 'subject_id = 1; DROP SCHEMA casc CASCADE');
SELECT * FROM dj.delete('casc.Subject', 'subject_id = 1 -- and more');
SELECT * FROM dj.delete('casc.Subject', 'subject_id IN (SELECT 1)');
SELECT * FROM dj.delete('casc.Subject', 'pg_terminate_backend(1)');
SELECT * FROM dj.delete('casc.Subject', 'casc.subject.subject_id = 1');
SELECT * FROM dj.delete('casc.Subject', 'nope = 1');
SELECT * FROM dj.delete('casc.Subject', key => '{"nope": 1}');
SELECT * FROM dj.delete('casc.Subject', part_integrity => 'sometimes');
SELECT * FROM dj.delete('casc.Subject', 'lower(sex::text) = ''f'' AND weight IS NULL');
SELECT count(*) AS subjects_left FROM casc.subject;

-- Dropping takes everything downstream; parts only with their master.
SELECT * FROM dj.drop('casc.Pair.Detail');
SELECT * FROM dj.drop('casc.Pair');
SELECT * FROM dj.drop('casc.Subject');
SELECT * FROM dj.tables('casc');
SELECT count(*) AS enum_types_left FROM pg_type WHERE typnamespace = 'casc'::regnamespace AND typtype = 'e';
SELECT count(*) AS lineage_left FROM casc."~lineage";
SELECT count(*) AS copies FROM dj.drop('casc_copy.Subject');
DROP TABLE public.dj_emp;
