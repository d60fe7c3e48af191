-- 0012: which credits a semester's credit limit counts (issue 14, item 4).
--
--   enrolled_and_waitlisted (the default, as before): a waitlist place
--       counts like a seat, so a student is never over the limit whatever
--       their waitlists turn into;
--   enrolled: a place on the waitlist of a section in offer mode does not
--       count (its seat comes only through an offer the student accepts by
--       registering, and that registration is checked against the limit);
--       a place on an auto waitlist still counts, since a freed seat enrols
--       its head without asking.
alter table semesters
    add column credit_counting text not null default 'enrolled_and_waitlisted'
        check (credit_counting in ('enrolled_and_waitlisted', 'enrolled'));
