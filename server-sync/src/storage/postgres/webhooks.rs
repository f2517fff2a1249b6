//! Webhooks and their deliveries, in SQL (migration 14).

use postgres::Client;

use crate::storage::{Delivery, Result, Webhook, now_ms};

pub(super) fn create(
    conn: &mut Client,
    (url, secret): (&str, &str),
    user_id: i64,
    cursor: i64,
) -> Result<i64> {
    Ok(conn
        .query_one(
            "INSERT INTO webhooks (url, secret, user_id, cursor, created_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&url, &secret, &user_id, &cursor, &now_ms()],
        )?
        .get(0))
}

pub(super) fn list(conn: &mut Client) -> Result<Vec<Webhook>> {
    Ok(conn
        .query(
            "SELECT w.id, w.url, w.secret, w.user_id, u.name, w.cursor, w.created_at, w.attempts,
                    w.failing_since, w.last_error, w.next_attempt_at
             FROM webhooks w JOIN users u ON u.id = w.user_id ORDER BY w.id",
            &[],
        )?
        .iter()
        .map(|row| Webhook {
            id: row.get(0),
            url: row.get(1),
            secret: row.get(2),
            user_id: row.get(3),
            user: row.get(4),
            cursor: row.get(5),
            created_at: row.get(6),
            attempts: row.get::<_, i32>(7) as u32,
            failing_since: row.get(8),
            last_error: row.get(9),
            next_attempt_at: row.get(10),
        })
        .collect())
}

pub(super) fn delete(conn: &mut Client, id: i64) -> Result<bool> {
    Ok(conn.execute("DELETE FROM webhooks WHERE id = $1", &[&id])? > 0)
}

pub(super) fn lease(conn: &mut Client, id: i64, now: i64, until: i64) -> Result<bool> {
    Ok(conn.execute(
        "UPDATE webhooks SET lease_until = $3
         WHERE id = $1 AND lease_until <= $2 AND next_attempt_at <= $2",
        &[&id, &now, &until],
    )? > 0)
}

pub(super) fn end_delivery(
    conn: &mut Client,
    id: i64,
    delivery: &Delivery,
    now: i64,
) -> Result<()> {
    match delivery {
        Delivery::Delivered { cursor } => conn.execute(
            "UPDATE webhooks SET cursor = greatest(cursor, $2), attempts = 0,
                    failing_since = NULL, last_error = NULL, next_attempt_at = 0, lease_until = 0
             WHERE id = $1",
            &[&id, &cursor],
        )?,
        Delivery::Failed { error, retry_at } => conn.execute(
            "UPDATE webhooks SET attempts = attempts + 1,
                    failing_since = coalesce(failing_since, $2), last_error = $3,
                    next_attempt_at = $4, lease_until = 0
             WHERE id = $1",
            &[&id, &now, &error, &retry_at],
        )?,
        Delivery::Idle => {
            conn.execute("UPDATE webhooks SET lease_until = 0 WHERE id = $1", &[&id])?
        }
    };
    Ok(())
}
