-- A small pipeline for the Superset check (make test-bi): two manual tables, a computed one with
-- rows, a view made with dj.create_view.
DROP SCHEMA IF EXISTS bi_demo CASCADE;
SELECT dj.declare('bi_demo.Subject', 'manual', 'subject_id : int32  # animal
---
species : varchar(16)');
SELECT dj.declare('bi_demo.Session', 'manual', '-> Subject
session : int16
---
duration : float64  # minutes');
SELECT dj.declare('bi_demo.Activity', 'computed', '-> Session
---
mean_rate : float64  # spikes per second');
INSERT INTO bi_demo.subject VALUES (1, 'mouse'), (2, 'mouse'), (3, 'rat');
INSERT INTO bi_demo.session VALUES (1, 1, 30), (1, 2, 45), (2, 1, 37.0), (3, 1, 12.5);
INSERT INTO bi_demo.__activity (subject_id, session, mean_rate) VALUES (1, 1, 2.5), (1, 2, 3.5), (2, 1, 37.0);
SELECT dj.create_view('bi_demo.activity', dj.join(dj.rel('bi_demo.Activity'), dj.rel('bi_demo.Subject')));
