"""The pretraining domains: airline, banking and library, which exist only to pretrain the tiny base.

The tiny base plays vanilla Qwen3-1.7B: it must know the chat format and how to call tools described in the
system prompt, but must never have seen retail, the task. So it is pretrained (`sft.py --mode pretrain`) on an
endless stream of conversations from these three domains: different tools, argument shapes and phrasings,
built with the same machinery as retail (`worlds.py`: tools that execute on a generated database, flows that
copy arguments, ask for missing ones and report tool values). A fraction of the conversations carry reasoning
traces, as a real thinking model has seen reasoning before the cold start.
"""

from __future__ import annotations

import random

from worlds import (LAST, Dialog, Domain, Tool, ask_for, conversation, digits, money, param, person, tool_error,
                    unique_ids)

AIRPORTS = ["JFK", "LAX", "SFO", "ORD", "SEA", "BOS", "MIA", "DEN", "ATL", "PHX"]


def airline_db(rng: random.Random, n_users: int) -> dict:
    flights = {}
    for num in unique_ids(rng, lambda: "HA" + digits(rng, 3), 40):
        o, dst = rng.sample(AIRPORTS, 2)
        flights[num] = {"flight_number": num, "origin": o, "destination": dst,
                        "status": rng.choice(["on time", "delayed", "cancelled", "landed"]),
                        "gate": rng.choice("ABCD") + str(rng.randint(1, 30))}
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    res_ids = iter(unique_ids(rng, lambda: "".join(rng.choice(letters) for _ in range(3)) + digits(rng, 3),
                              2 * n_users))
    users, reservations = {}, {}
    for uid in unique_ids(rng, lambda: "cust_" + digits(rng, 5), n_users):
        user = {"user_id": uid, **person(rng), "membership": rng.choice(["regular", "silver", "gold"]),
                "reservations": []}
        for _ in range(2):
            rid = next(res_ids)
            f = rng.choice(sorted(flights))
            reservations[rid] = {"reservation_id": rid, "user_id": uid, "flight_number": f,
                                 "date": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                                 "cabin": rng.choice(["economy", "business"]), "bags": rng.randint(0, 2),
                                 "refundable": rng.random() < 0.5}
            user["reservations"].append(rid)
        users[uid] = user
    return {"users": users, "reservations": reservations, "flights": flights}


def a_find(db, a):
    for u in db["users"].values():
        if u["first"] == a.get("first_name") and u["last"] == a.get("last_name"):
            return {"user_id": u["user_id"]}
    return tool_error("no such passenger")


def a_profile(db, a):
    u = db["users"].get(a.get("user_id"))
    return {k: u[k] for k in ("user_id", "name", "membership", "reservations")} if u else tool_error("no such user")


def a_reservation(db, a):
    return db["reservations"].get(a.get("reservation_id")) or tool_error("reservation not found")


def a_flight(db, a):
    f = db["flights"].get(a.get("flight_number"))
    return {**f, "date": a.get("date")} if f else tool_error("flight not found")


def a_cancel(db, a):
    r = db["reservations"].get(a.get("reservation_id"))
    if not r:
        return tool_error("reservation not found")
    if not r["refundable"]:
        return tool_error("reservation is not refundable")
    db["reservations"][r["reservation_id"]] = {**r, "cancelled": True}
    return {"reservation_id": r["reservation_id"], "cancelled": True}


def a_bags(db, a):
    r = db["reservations"].get(a.get("reservation_id"))
    if not r:
        return tool_error("reservation not found")
    n = a.get("total_bags")
    db["reservations"][r["reservation_id"]] = {**r, "bags": n}
    return {"reservation_id": r["reservation_id"], "bags": n, "fee": 35 * max(0, (n or 0) - 1)}


def a_cabin(db, a):
    r = db["reservations"].get(a.get("reservation_id"))
    if not r:
        return tool_error("reservation not found")
    db["reservations"][r["reservation_id"]] = {**r, "cabin": a.get("cabin")}
    return {"reservation_id": r["reservation_id"], "cabin": a.get("cabin")}


AIRLINE_TOOLS = [
    Tool("lookup_passenger", "Find a passenger's user id from their first and last name.",
         {"first_name": param("string", "First name."), "last_name": param("string", "Last name.")}, a_find),
    Tool("get_passenger_profile", "Get a passenger's membership and reservations.",
         {"user_id": param("string", "The user id, such as cust_12345.")}, a_profile),
    Tool("get_reservation", "Get the flight, date, cabin and bags of a reservation.",
         {"reservation_id": param("string", "Six-character reservation code, such as ABC123.")}, a_reservation),
    Tool("get_flight_status", "Get the status and gate of a flight on a date.",
         {"flight_number": param("string", "Flight number, such as HA123."),
          "date": param("string", "Date as YYYY-MM-DD.")}, a_flight),
    Tool("cancel_reservation", "Cancel a refundable reservation.",
         {"reservation_id": param("string", "Reservation code.")}, a_cancel),
    Tool("update_checked_bags", "Set the number of checked bags on a reservation.",
         {"reservation_id": param("string", "Reservation code."),
          "total_bags": param("integer", "Total number of checked bags.")}, a_bags),
    Tool("change_cabin", "Change the cabin class of a reservation.",
         {"reservation_id": param("string", "Reservation code."),
          "cabin": param("string", "New cabin.", enum=["economy", "business"])}, a_cabin),
]


def air_reservation(d: Dialog, u: dict) -> None:
    rid = d.rng.choice(u["reservations"])
    d.user(d.rng.choice([f"Can you pull up reservation {rid}?", f"What flight is my booking {rid} on?"]))
    [r] = d.call("I look up the reservation code the passenger gave.", ("get_reservation", {"reservation_id": rid}))
    d.say(f"Reservation {rid} is on flight {r['flight_number']} on {r['date']} in {r['cabin']} with {r['bags']} bags.",
          "I report the reservation details.")


def air_flight_status(d: Dialog, u: dict) -> None:
    f = d.rng.choice(sorted(d.db["flights"]))
    date = f"2025-{d.rng.randint(1, 12):02d}-{d.rng.randint(1, 28):02d}"
    if d.rng.random() < 0.35:
        ask_for(d, "travel date", f"Is flight {f} on time?")
        d.user(f"I fly on {date}.")
    else:
        d.user(d.rng.choice([f"Is flight {f} on {date} on time?", f"What's the status of {f} on {date}?"]))
    [r] = d.call("I have the flight number and the date, so I check the status.",
                 ("get_flight_status", {"flight_number": f, "date": date}))
    d.say(f"Flight {f} on {date} is {r['status']}, departing from gate {r['gate']}.", "I report status and gate.")


def air_cancel(d: Dialog, u: dict) -> None:
    rid = d.rng.choice(u["reservations"])
    d.user(f"I need to cancel booking {rid}.")
    [r] = d.call("Only refundable reservations can be cancelled; I check it.",
                 ("get_reservation", {"reservation_id": rid}))
    if not r["refundable"]:
        d.say(f"Unfortunately reservation {rid} is not refundable, so I cannot cancel it.",
              "The reservation is not refundable; policy forbids the cancellation.")
        return
    d.call("It is refundable, so I cancel it.", ("cancel_reservation", {"reservation_id": rid}))
    d.say(f"Reservation {rid} is cancelled and will be refunded.", "I confirm the cancellation.")


def air_bags(d: Dialog, u: dict) -> None:
    rid, n = d.rng.choice(u["reservations"]), d.rng.randint(1, 4)
    d.user(f"Please set {n} checked bags on reservation {rid}.")
    [r] = d.call("I update the bag count with the number given.",
                 ("update_checked_bags", {"reservation_id": rid, "total_bags": n}))
    d.say(f"Reservation {rid} now has {n} checked bags, with a fee of {r['fee']} dollars.", "I report bags and fee.")


def air_profile_by_name(d: Dialog, u: dict) -> None:
    d.user(f"I'm {u['first']} {u['last']}. What is my membership level?")
    [f] = d.call("I find the passenger by name to get the user id.",
                 ("lookup_passenger", {"first_name": u["first"], "last_name": u["last"]}))
    [p] = d.call(f"The user id is {f['user_id']}; I fetch the profile.", ("get_passenger_profile", f))
    d.say(f"You are a {p['membership']} member with {len(p['reservations'])} reservations.", "I report membership.")


def air_two_flights(d: Dialog, u: dict) -> None:
    a, b = d.rng.sample(sorted(d.db["flights"]), 2)
    date = f"2025-{d.rng.randint(1, 12):02d}-{d.rng.randint(1, 28):02d}"
    d.user(f"On {date}, are flights {a} and {b} on time?")
    ra, rb = d.call("Two independent flights; I check both in parallel.",
                    ("get_flight_status", {"flight_number": a, "date": date}),
                    ("get_flight_status", {"flight_number": b, "date": date}))
    d.say(f"Flight {a} is {ra['status']} and flight {b} is {rb['status']}.", "I report both.")


def air_cabin(d: Dialog, u: dict) -> None:
    rid, cabin = d.rng.choice(u["reservations"]), d.rng.choice(["economy", "business"])
    d.user(f"Can you move reservation {rid} to {cabin}?")
    d.call("I change the cabin as asked.", ("change_cabin", {"reservation_id": rid, "cabin": cabin}))
    d.say(f"Reservation {rid} is now in {cabin}.", "I confirm the change.")


AIRLINE = Domain(
    "airline",
    "You are an airline support agent. Help passengers with reservations, flights and bags. "
    "Only refundable reservations can be cancelled. Ask for the travel date when checking a flight.",
    {t.name: t for t in AIRLINE_TOOLS}, airline_db,
    [air_reservation, air_flight_status, air_cancel, air_bags, air_profile_by_name, air_two_flights, air_cabin],
    "users")


# ----------------------------------------------------------------------------------------------
# Banking (pretraining only)
# ----------------------------------------------------------------------------------------------
def bank_db(rng: random.Random, n_users: int) -> dict:
    customers, accounts = {}, {}
    acct_ids = iter(unique_ids(rng, lambda: digits(rng, 8), 2 * n_users))
    for cid in unique_ids(rng, lambda: "C-" + digits(rng, 6), n_users):
        c = {"customer_id": cid, **person(rng), "phone": f"555-{digits(rng, 3)}-{digits(rng, 4)}",
             "card_last4": digits(rng, 4), "accounts": []}
        for kind in ("checking", "savings"):
            n = next(acct_ids)
            accounts[n] = {"account_number": n, "customer_id": cid, "type": kind,
                           "balance": round(rng.randint(0, 500000) / 100, 2)}
            c["accounts"].append(n)
        customers[cid] = c
    rates = {f"{x}_{y}": round(rng.uniform(0.5, 1.6), 4) for x in ("USD", "EUR", "GBP") for y in ("USD", "EUR", "GBP")
             if x != y}
    return {"customers": customers, "accounts": accounts, "rates": rates}


def b_balance(db, a):
    acct = db["accounts"].get(a.get("account_number"))
    return {"account_number": acct["account_number"], "type": acct["type"], "balance": acct["balance"]} \
        if acct else tool_error("account not found")


def b_transfer(db, a):
    src, dst = db["accounts"].get(a.get("from_account")), db["accounts"].get(a.get("to_account"))
    amount = a.get("amount")
    if not src or not dst:
        return tool_error("account not found")
    if not isinstance(amount, (int, float)) or amount <= 0 or amount > src["balance"]:
        return tool_error("insufficient funds")
    db["accounts"][src["account_number"]] = {**src, "balance": round(src["balance"] - amount, 2)}
    db["accounts"][dst["account_number"]] = {**dst, "balance": round(dst["balance"] + amount, 2)}
    return {"from_account": src["account_number"], "to_account": dst["account_number"], "amount": amount,
            "new_balance": round(src["balance"] - amount, 2)}


def b_find(db, a):
    for c in db["customers"].values():
        if c["phone"] == a.get("phone"):
            return {"customer_id": c["customer_id"]}
    return tool_error("customer not found")


def b_customer(db, a):
    c = db["customers"].get(a.get("customer_id"))
    return {k: c[k] for k in ("customer_id", "name", "accounts")} if c else tool_error("customer not found")


def b_freeze(db, a):
    for c in db["customers"].values():
        if c["card_last4"] == a.get("card_last4") and c["customer_id"] == a.get("customer_id"):
            return {"card_last4": c["card_last4"], "frozen": True, "reason": a.get("reason")}
    return tool_error("card not found")


def b_rate(db, a):
    key = f"{a.get('from_currency')}_{a.get('to_currency')}"
    return {"pair": key, "rate": db["rates"][key]} if key in db["rates"] else tool_error("unknown currency pair")


BANK_TOOLS = [
    Tool("get_balance", "Get the balance of an account.",
         {"account_number": param("string", "Eight-digit account number.")}, b_balance),
    Tool("transfer_funds", "Move money between two accounts.",
         {"from_account": param("string", "Source account number."),
          "to_account": param("string", "Destination account number."),
          "amount": param("number", "Amount in dollars.")}, b_transfer),
    Tool("find_customer_by_phone", "Find a customer id from a phone number.",
         {"phone": param("string", "Phone number like 555-123-4567.")}, b_find),
    Tool("get_customer", "Get a customer's name and account numbers.",
         {"customer_id": param("string", "Customer id such as C-123456.")}, b_customer),
    Tool("freeze_card", "Freeze a customer's debit card.",
         {"customer_id": param("string", "Customer id."), "card_last4": param("string", "Last four card digits."),
          "reason": param("string", "Why.", enum=["lost", "stolen", "suspicious activity"])}, b_freeze),
    Tool("get_exchange_rate", "Get the exchange rate between two currencies.",
         {"from_currency": param("string", "Currency code such as USD."),
          "to_currency": param("string", "Currency code such as EUR.")}, b_rate),
]


def bank_balance(d: Dialog, c: dict) -> None:
    n = d.rng.choice(c["accounts"])
    if d.rng.random() < 0.35:
        ask_for(d, "account number", "How much money do I have?")
        d.user(f"It's account {n}.")
    else:
        d.user(d.rng.choice([f"What's the balance on account {n}?", f"How much is in my account {n}?"]))
    [r] = d.call("I check the balance of the given account.", ("get_balance", {"account_number": n}))
    d.say(f"Your {r['type']} account {n} has a balance of {money(r['balance'])} dollars.", "I report the balance.")


def bank_transfer(d: Dialog, c: dict) -> None:
    src, dst = c["accounts"]
    bal = d.db["accounts"][src]["balance"]
    amount = float(d.rng.randint(1, 400) * 10) if d.rng.random() < 0.7 else float(int(bal) + 100)
    d.user(f"Please move {amount:g} dollars from account {src} to account {dst}.")
    [b] = d.call("A transfer needs enough funds; I check the source balance first.",
                 ("get_balance", {"account_number": src}))
    if b["balance"] < amount:
        d.say(f"I'm sorry, account {src} only has {money(b['balance'])} dollars, which is not enough.",
              "The balance is below the amount, so I must refuse.")
        return
    [t] = d.call("There are enough funds, so I make the transfer.",
                 ("transfer_funds", {"from_account": src, "to_account": dst, "amount": amount}))
    d.say(f"Done. {amount:g} dollars moved; account {src} now has {money(t['new_balance'])} dollars.",
          "I confirm the transfer and the new balance.")


def bank_by_phone(d: Dialog, c: dict) -> None:
    d.user(f"My phone number is {c['phone']}. Which accounts do I have?")
    [f] = d.call("I find the customer from the phone number.", ("find_customer_by_phone", {"phone": c["phone"]}))
    [r] = d.call(f"Customer id {f['customer_id']}; I get the account list.", ("get_customer", f))
    d.say(f"You have accounts {' and '.join(r['accounts'])}.", "I list the accounts.")


def bank_two_balances(d: Dialog, c: dict) -> None:
    a, b = c["accounts"]
    d.user(f"What are the balances of accounts {a} and {b}?")
    ra, rb = d.call("Two accounts; I check both balances in parallel.",
                    ("get_balance", {"account_number": a}), ("get_balance", {"account_number": b}))
    d.say(f"Account {a} has {money(ra['balance'])} and account {b} has {money(rb['balance'])} dollars.",
          "I report both.")


def bank_freeze(d: Dialog, c: dict) -> None:
    reason = d.rng.choice(["lost", "stolen"])
    d.user(f"My card ending in {c['card_last4']} was {reason}. My customer id is {c['customer_id']}.")
    d.call("I freeze the card with the customer id, last four digits and reason.",
           ("freeze_card", {"customer_id": c["customer_id"], "card_last4": c["card_last4"], "reason": reason}))
    d.say(f"Your card ending in {c['card_last4']} is now frozen.", "I confirm the freeze.")


def bank_rate(d: Dialog, c: dict) -> None:
    x, y = d.rng.sample(["USD", "EUR", "GBP"], 2)
    d.user(f"What is the exchange rate from {x} to {y}?")
    [r] = d.call("I look up the currency pair.", ("get_exchange_rate", {"from_currency": x, "to_currency": y}))
    d.say(f"One {x} is {r['rate']} {y}.", "I report the rate.")


BANKING = Domain(
    "banking",
    "You are a bank support agent. Help customers with balances, transfers and cards. "
    "Never transfer more than the source balance. Ask for the account number when it is missing.",
    {t.name: t for t in BANK_TOOLS}, bank_db,
    [bank_balance, bank_transfer, bank_by_phone, bank_two_balances, bank_freeze, bank_rate], "customers")


# ----------------------------------------------------------------------------------------------
# Library (pretraining only)
# ----------------------------------------------------------------------------------------------
TITLES = ["The Silent Sea", "Winter Garden", "A Short History of Time", "The Last Orchard", "River of Stars",
          "Modern Baking", "The Glass Tower", "Learning Python", "Night Trains", "The Red Fox", "Deep Roots",
          "Mountain Paths", "The Clockmaker", "Ocean Light", "Small Wonders", "The Map Room"]


def library_db(rng: random.Random, n_users: int) -> dict:
    books = {}
    for i, bid in enumerate(unique_ids(rng, lambda: "B" + digits(rng, 4), len(TITLES))):
        books[bid] = {"book_id": bid, "title": TITLES[i], "author": rng.choice(LAST),
                      "copies_available": rng.randint(0, 3)}
    members, loans = {}, {}
    loan_ids = iter(unique_ids(rng, lambda: "L" + digits(rng, 6), 2 * n_users))
    for mid in unique_ids(rng, lambda: "M" + digits(rng, 4), n_users):
        m = {"member_id": mid, **person(rng), "loans": []}
        for _ in range(2):
            lid = next(loan_ids)
            loans[lid] = {"loan_id": lid, "member_id": mid, "book_id": rng.choice(sorted(books)),
                          "due": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                          "renewals": rng.randint(0, 2)}
            m["loans"].append(lid)
        members[mid] = m
    return {"members": members, "books": books, "loans": loans}


def l_search(db, a):
    hits = [{"book_id": b["book_id"], "title": b["title"]} for b in db["books"].values()
            if str(a.get("title", "")).lower() in b["title"].lower()]
    return {"results": hits}


def l_book(db, a):
    return db["books"].get(a.get("book_id")) or tool_error("book not found")


def l_loan(db, a):
    return db["loans"].get(a.get("loan_id")) or tool_error("loan not found")


def l_renew(db, a):
    loan = db["loans"].get(a.get("loan_id"))
    if not loan:
        return tool_error("loan not found")
    if loan["renewals"] >= 2:
        return tool_error("renewal limit reached")
    db["loans"][loan["loan_id"]] = {**loan, "renewals": loan["renewals"] + 1}
    return {"loan_id": loan["loan_id"], "extended_by_days": a.get("days"), "renewals": loan["renewals"] + 1}


def l_checkout(db, a):
    b = db["books"].get(a.get("book_id"))
    if not b or a.get("member_id") not in db["members"]:
        return tool_error("book or member not found")
    if b["copies_available"] < 1:
        return tool_error("no copies available")
    db["books"][b["book_id"]] = {**b, "copies_available": b["copies_available"] - 1}
    return {"member_id": a["member_id"], "book_id": b["book_id"], "status": "checked out"}


def l_hold(db, a):
    if a.get("book_id") not in db["books"] or a.get("member_id") not in db["members"]:
        return tool_error("book or member not found")
    return {"member_id": a["member_id"], "book_id": a["book_id"], "status": "on hold"}


LIBRARY_TOOLS = [
    Tool("search_catalog", "Search books by title words.", {"title": param("string", "Words of the title.")},
         l_search),
    Tool("get_book", "Get a book's author and available copies.",
         {"book_id": param("string", "Book id such as B1234.")}, l_book),
    Tool("get_loan", "Get the book, due date and renewals of a loan.",
         {"loan_id": param("string", "Loan id such as L123456.")}, l_loan),
    Tool("renew_loan", "Extend a loan (at most two renewals).",
         {"loan_id": param("string", "Loan id."), "days": param("integer", "Days to extend, 7 or 14.")}, l_renew),
    Tool("checkout_book", "Check out an available book to a member.",
         {"member_id": param("string", "Member id such as M1234."), "book_id": param("string", "Book id.")},
         l_checkout),
    Tool("place_hold", "Place a hold on a book for a member.",
         {"member_id": param("string", "Member id."), "book_id": param("string", "Book id.")}, l_hold),
]


def lib_search(d: Dialog, m: dict) -> None:
    b = d.rng.choice(list(d.db["books"].values()))
    d.user(d.rng.choice([f"Do you have '{b['title']}'?", f"Is '{b['title']}' available to borrow?"]))
    [s] = d.call("I search the catalog for the title.", ("search_catalog", {"title": b["title"]}))
    bid = s["results"][0]["book_id"]
    [r] = d.call(f"The book id is {bid}; I check copies.", ("get_book", {"book_id": bid}))
    d.say(f"'{r['title']}' by {r['author']} has {r['copies_available']} copies available.", "I report availability.")


def lib_loan(d: Dialog, m: dict) -> None:
    lid = d.rng.choice(m["loans"])
    if d.rng.random() < 0.35:
        ask_for(d, "loan id", "When is my book due?")
        d.user(f"The loan id is {lid}.")
    else:
        d.user(f"When is loan {lid} due?")
    [r] = d.call("I look up the loan.", ("get_loan", {"loan_id": lid}))
    d.say(f"Loan {lid} is due on {r['due']}.", "I report the due date.")


def lib_renew(d: Dialog, m: dict) -> None:
    lid, days = d.rng.choice(m["loans"]), d.rng.choice([7, 14])
    d.user(f"Please renew loan {lid} for {days} days.")
    [r] = d.call("Loans can be renewed at most twice; I check this one.", ("get_loan", {"loan_id": lid}))
    if r["renewals"] >= 2:
        d.say(f"Sorry, loan {lid} was already renewed twice, which is the limit.", "The limit is reached; I refuse.")
        return
    d.call("Fewer than two renewals, so I renew it.", ("renew_loan", {"loan_id": lid, "days": days}))
    d.say(f"Loan {lid} is extended by {days} days.", "I confirm the renewal.")


def lib_checkout(d: Dialog, m: dict) -> None:
    b = d.rng.choice(list(d.db["books"].values()))
    d.user(f"I'm member {m['member_id']} and want to borrow book {b['book_id']}.")
    [r] = d.call("I check that a copy is available first.", ("get_book", {"book_id": b["book_id"]}))
    if r["copies_available"] < 1:
        d.call("No copies are available, so I place a hold instead.",
               ("place_hold", {"member_id": m["member_id"], "book_id": b["book_id"]}))
        d.say(f"No copies are free, so I placed a hold on '{r['title']}' for you.", "I explain the hold.")
        return
    d.call("A copy is available; I check it out.", ("checkout_book", {"member_id": m["member_id"],
                                                                       "book_id": b["book_id"]}))
    d.say(f"'{r['title']}' is checked out to you.", "I confirm the checkout.")


def lib_two_loans(d: Dialog, m: dict) -> None:
    a, b = m["loans"]
    d.user(f"When are my loans {a} and {b} due?")
    ra, rb = d.call("Two loans; I look both up in parallel.", ("get_loan", {"loan_id": a}), ("get_loan", {"loan_id": b}))
    d.say(f"Loan {a} is due {ra['due']} and loan {b} is due {rb['due']}.", "I report both dates.")


def lib_hold(d: Dialog, m: dict) -> None:
    b = d.rng.choice(list(d.db["books"].values()))
    d.user(f"Member {m['member_id']} here, please put a hold on book {b['book_id']}.")
    d.call("I place the hold for the member.", ("place_hold", {"member_id": m["member_id"], "book_id": b["book_id"]}))
    d.say(f"Book {b['book_id']} is on hold for you.", "I confirm the hold.")


LIBRARY = Domain(
    "library",
    "You are a library assistant. Help members find, borrow and renew books. "
    "A loan can be renewed at most twice. Ask for the loan id when it is missing.",
    {t.name: t for t in LIBRARY_TOOLS}, library_db,
    [lib_search, lib_loan, lib_renew, lib_checkout, lib_two_loans, lib_hold], "members")

PRETRAIN_DOMAINS = [AIRLINE, BANKING, LIBRARY]


def pretrain_stream(seed: int, n_users: int = 300, think_fraction: float = 0.2):
    """An endless stream of conversations from the non-retail domains (never retail); a fraction carry
    reasoning traces, as a real thinking model has seen reasoning before our cold start."""
    rng = random.Random(seed)
    dbs = {d.name: d.make_db(rng, n_users) for d in PRETRAIN_DOMAINS}
    while True:
        domain = rng.choice(PRETRAIN_DOMAINS)
        db = dbs[domain.name]
        customer = rng.choice(list(db[domain.customers].values()))
        yield conversation(domain, db, customer, rng, think=rng.random() < think_fraction)
